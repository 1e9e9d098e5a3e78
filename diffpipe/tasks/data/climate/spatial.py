"""Our latitude-longitude layer on top of the FaIR global response (documented, idealised, not a GCM).

- Land: idealised continents (ellipses), not a real coastline.
- Forced warming pattern: polar amplification (stronger in the Arctic than the Antarctic) times a
  land/sea warming ratio, normalised to area mean 1 so the global mean equals FaIR's.
- Aerosol cooling pattern: a Northern-Hemisphere-weighted broad part plus the aerosol loading
  downwind of the year's emission regions; also normalised to area mean 1.
- SO2/BC emission maps: global RCMIP totals spread over Gaussian source regions whose shares move
  from Europe/North America to Asia/Africa over time (illustrative share tables below).
- Internal variability: AR(1) in time with coefficient exp(-lambda / C) from the land or ocean heat
  capacity C, spatially correlated through separable Gaussian smoothing, amplitude larger over
  land and at high latitude.
- Precipitation: mean change scales with global temperature (hydrological sensitivity, "wet get
  wetter, dry get drier" pattern), aerosols suppress it more per kelvin; pr90 follows the 90th
  percentile of a gamma-distributed daily series with Clausius-Clapeyron intensification and its
  sampling noise over 365 days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

EARTH_RADIUS_M = 6.371e6
SECONDS_PER_YEAR = 365.25 * 86400
KG_PER_MT = 1e9
CONTINENTS = (  # (centre lat, centre lon, half-extent lat, half-extent lon), degrees
    (47, 258, 20, 32),
    (68, 315, 12, 18),
    (-17, 298, 28, 15),
    (50, 90, 20, 65),
    (20, 78, 12, 12),
    (25, 45, 10, 12),
    (5, 20, 30, 22),
    (-25, 134, 11, 18),
    (-82, 0, 14, 400),
)
REGIONS = {  # emission region: (centre lat, centre lon, radius deg)
    "north_america": (40, 275, 8),
    "europe": (50, 15, 8),
    "east_asia": (32, 115, 7),
    "south_asia": (24, 80, 6),
    "africa": (0, 20, 10),
    "south_america": (-15, 305, 9),
    "middle_east": (28, 50, 6),
}
SHARE_YEARS = (1850, 1950, 1980, 2010, 2050, 2100)
SO2_SHARES = {  # illustrative regional shares of global emissions (rows follow REGIONS)
    "north_america": (0.35, 0.35, 0.30, 0.10, 0.06, 0.05),
    "europe": (0.45, 0.40, 0.35, 0.08, 0.05, 0.05),
    "east_asia": (0.05, 0.08, 0.15, 0.40, 0.30, 0.20),
    "south_asia": (0.05, 0.05, 0.07, 0.20, 0.30, 0.30),
    "africa": (0.03, 0.04, 0.04, 0.07, 0.12, 0.20),
    "south_america": (0.04, 0.04, 0.05, 0.07, 0.08, 0.10),
    "middle_east": (0.03, 0.04, 0.04, 0.08, 0.09, 0.10),
}
BC_SHARES = {
    "north_america": (0.25, 0.20, 0.12, 0.06, 0.05, 0.05),
    "europe": (0.35, 0.30, 0.20, 0.07, 0.05, 0.05),
    "east_asia": (0.15, 0.20, 0.30, 0.35, 0.25, 0.15),
    "south_asia": (0.10, 0.12, 0.15, 0.22, 0.28, 0.30),
    "africa": (0.08, 0.10, 0.13, 0.17, 0.22, 0.27),
    "south_america": (0.05, 0.05, 0.07, 0.08, 0.08, 0.10),
    "middle_east": (0.02, 0.03, 0.03, 0.05, 0.07, 0.08),
}


def climatebench_grid(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    """ClimateBench-style grid: latitudes -90..90 including the poles, longitudes 0..360 exclusive."""
    return np.linspace(-90.0, 90.0, nlat), np.arange(nlon) * 360.0 / nlon


def area_weights(lat: np.ndarray) -> np.ndarray:
    """cos(latitude) weights normalised to mean 1 (ClimateBench convention)."""
    w = np.cos(np.deg2rad(lat))
    return w / w.mean()


def area_mean(field: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the last two (lat, lon) axes: sum(w f) / sum(w) over the finite cells."""
    weights = np.broadcast_to(area_weights(lat)[:, None], field.shape[-2:])
    valid = np.isfinite(field)
    total = np.where(valid, field * weights, 0.0).sum(axis=(-2, -1))
    return total / np.where(valid, weights, 0.0).sum(axis=(-2, -1))


def _angular_distance(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    phi, phi0 = np.deg2rad(lat)[:, None], np.deg2rad(lat0)
    dlon = np.deg2rad(lon[None, :] - lon0)
    cos_d = np.sin(phi) * np.sin(phi0) + np.cos(phi) * np.cos(phi0) * np.cos(dlon)
    return np.rad2deg(np.arccos(np.clip(cos_d, -1.0, 1.0)))


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Idealised continents as a boolean (lat, lon) mask."""
    mask = np.zeros((lat.size, lon.size), dtype=bool)
    for lat0, lon0, half_lat, half_lon in CONTINENTS:
        dlon = (lon[None, :] - lon0 + 180.0) % 360.0 - 180.0
        mask |= ((lat[:, None] - lat0) / half_lat) ** 2 + (dlon / half_lon) ** 2 <= 1.0
    return mask


def normalise_area_mean(field: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Scale a (..., lat, lon) field so its area-weighted mean is 1."""
    return field / area_mean(field, lat)[..., None, None]


def warming_pattern(
    lat: np.ndarray, land: np.ndarray, arctic: float, antarctic: float, land_ratio: float
) -> np.ndarray:
    """Forced warming per kelvin of global warming: polar amplification x land/sea ratio, area mean 1.

    `arctic` / `antarctic` are the local-to-global warming ratios at the poles before normalisation.
    """
    s4 = np.sin(np.deg2rad(lat)) ** 4
    polar = 1.0 + np.where(lat > 0, arctic - 1.0, antarctic - 1.0) * s4
    return normalise_area_mean(polar[:, None] * np.where(land, land_ratio, 1.0), lat)


def _shares(table: dict[str, tuple[float, ...]], years: np.ndarray) -> np.ndarray:
    shares = np.stack([np.interp(years, SHARE_YEARS, table[r]) for r in REGIONS], axis=-1)
    return shares / shares.sum(axis=-1, keepdims=True)


def _blobs(lat: np.ndarray, lon: np.ndarray, widen: float) -> np.ndarray:
    return np.stack(
        [
            np.exp(-0.5 * (_angular_distance(lat, lon, la, lo) / (widen * r)) ** 2)
            for la, lo, r in REGIONS.values()
        ]
    )


def cell_area(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Approximate cell areas (m^2) of a regular grid, zero at the pole rows."""
    dlat, dlon = np.deg2rad(180.0 / max(lat.size - 1, 1)), np.deg2rad(360.0 / lon.size)
    return np.broadcast_to(
        (EARTH_RADIUS_M**2 * np.cos(np.deg2rad(lat)) * dlat * dlon)[:, None], (lat.size, lon.size)
    )


def emission_maps(
    lat: np.ndarray, lon: np.ndarray, years: np.ndarray, totals_mt: np.ndarray, species: str
) -> np.ndarray:
    """(year, lat, lon) emission flux in kg m-2 s-1 whose global integral equals the RCMIP total (Mt/yr)."""
    table = SO2_SHARES if species == "SO2" else BC_SHARES
    area = cell_area(lat, lon)
    blobs = _blobs(lat, lon, 1.0)
    blobs = blobs / (blobs * area).sum(axis=(1, 2), keepdims=True)
    per_m2_year = np.einsum("tr,ryx->tyx", _shares(table, years), blobs)
    return per_m2_year * (totals_mt * KG_PER_MT / SECONDS_PER_YEAR)[:, None, None]


def aerosol_pattern(
    lat: np.ndarray, lon: np.ndarray, land: np.ndarray, years: np.ndarray, local_weight: float
) -> np.ndarray:
    """(year, lat, lon) cooling per kelvin of global aerosol cooling: broad NH part + loading near sources."""
    broad = (1.0 + 0.6 * np.sin(np.deg2rad(lat)))[:, None] * np.where(land, 1.3, 1.0)
    loading = np.einsum("tr,ryx->tyx", _shares(SO2_SHARES, years), _blobs(lat, lon, 2.5))
    loading = normalise_area_mean(loading, lat)
    return normalise_area_mean(
        (1.0 - local_weight) * normalise_area_mean(broad, lat) + local_weight * loading, lat
    )


def precipitation_climatology(lat: np.ndarray, land: np.ndarray) -> np.ndarray:
    """Idealised mean precipitation (mm/day): ITCZ, dry subtropics, mid-latitude storm tracks."""
    a = np.abs(lat)
    zonal = (
        0.9
        + 5.5 * np.exp(-(((lat - 6.0) / 9.0) ** 2))
        + 2.2 * np.exp(-(((a - 45.0) / 12.0) ** 2))
        - 0.6 * np.exp(-(((a - 22.0) / 8.0) ** 2))
    )
    return np.clip(zonal, 0.2, None)[:, None] * np.where(land, 0.8, 1.0)


def wet_get_wetter(pr0: np.ndarray, lat: np.ndarray, dry_threshold: float = 0.6) -> np.ndarray:
    """Precipitation change pattern per unit global change: positive where wet, negative where dry."""
    return normalise_area_mean(pr0 / area_mean(pr0, lat) - dry_threshold, lat)


def gamma_quantile_terms(shape: float, quantile: float = 0.9, days: int = 365) -> tuple[float, float]:
    """Daily rain ~ Gamma(shape, mean/shape): (quantile / mean, std of the annual sample quantile / mean)."""
    x = float(special.gammaincinv(shape, quantile))
    density = float(np.exp((shape - 1) * np.log(x) - x - special.gammaln(shape)))
    return x / shape, np.sqrt(quantile * (1 - quantile) / days) / density / shape


def smoothing_operator(n: int, sigma_cells: float, periodic: bool) -> np.ndarray:
    """Row-normalised Gaussian smoothing matrix (n x n), periodic or reflecting at the ends."""
    i = np.arange(n)
    d = np.abs(i[:, None] - i[None, :]).astype(float)
    if periodic:
        d = np.minimum(d, n - d)
    k = np.exp(-0.5 * (d / max(sigma_cells, 1e-6)) ** 2)
    return k / k.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class CorrelatedNoise:
    """Unit-variance Gaussian fields with a Gaussian spatial correlation of a given length (degrees)."""

    lat_op: np.ndarray
    lon_op: np.ndarray
    scale: np.ndarray

    @classmethod
    def on_grid(cls, lat: np.ndarray, lon: np.ndarray, length_deg: float) -> CorrelatedNoise:
        """Operators for a grid; correlation length in degrees of latitude/longitude."""
        dlat, dlon = 180.0 / max(lat.size - 1, 1), 360.0 / lon.size
        lat_op = smoothing_operator(lat.size, length_deg / dlat, periodic=False)
        lon_op = smoothing_operator(lon.size, length_deg / dlon, periodic=True)
        var = (lat_op**2).sum(axis=1)[:, None] * (lon_op**2).sum(axis=1)[None, :]
        return cls(lat_op, lon_op, 1.0 / np.sqrt(var))

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """(count, lat, lon) independent unit-variance correlated fields."""
        white = rng.standard_normal((count, *self.scale.shape))
        return np.einsum("ij,tjk,lk->til", self.lat_op, white, self.lon_op, optimize=True) * self.scale


def ar1_series(shocks: np.ndarray, phi: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Stationary unit-variance AR(1) over axis 0: x_t = phi x_{t-1} + sqrt(1 - phi^2) shock_t."""
    out = np.empty_like(shocks)
    prev = shocks[0] if start is None else phi * start + np.sqrt(1 - phi**2) * shocks[0]
    out[0] = prev
    for t in range(1, shocks.shape[0]):
        prev = phi * prev + np.sqrt(1 - phi**2) * shocks[t]
        out[t] = prev
    return out
