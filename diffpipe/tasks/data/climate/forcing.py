"""Real forcing pathways (RCMIP v5.1.0 via the fair 1.6.4 wheel, vendored) and the FaIR 2 global response.

Global response: FaIR 2's three-layer `EnergyBalanceModel` (Cummins et al. 2020 / Leach et al. 2021),
driven by RCMIP effective radiative forcing. ECS is set by the feedback parameter
(lambda = F_2x / ECS) and TCR by the top-to-middle layer heat exchange, solved with a root finder so
that FaIR's own `emergent_parameters()` returns the requested ECS and TCR. Internal variability of
the global mean comes from FaIR's stochastic mode, seeded per member; SSP members branch from the
historical member's state at 2014, as CMIP6 SSP runs do.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from fair.energy_balance_model import EnergyBalanceModel
from scipy.optimize import brentq

DATA_FILE = Path(__file__).with_name("rcmip_ssp_subset.csv")
FIRST_YEAR, HIST_END, LAST_YEAR, CUMULATIVE_FROM = 1750, 2014, 2100, 1850
HIST_SOURCE = "ssp245"  # every SSP table holds the same 1750-2014 history
HISTORICAL = ("historical", "hist-GHG", "hist-aer")
ERF = "Effective Radiative Forcing"
GHG_ERF = tuple(f"{ERF}|Anthropogenic|{g}" for g in ("CO2", "CH4", "N2O", "Other|Other WMGHGs"))
AER_ERF = f"{ERF}|Anthropogenic|Aerosols"
OCEAN_HEAT_CAPACITY = (8.0, 14.0, 100.0)  # W yr m-2 K-1, top (mixed layer) to deep ocean
DEEP_TRANSFER = 0.9  # W m-2 K-1, middle-to-deep layer exchange
DEEP_OCEAN_EFFICACY = 1.1
FORCING_4CO2 = 7.86  # W m-2 (AR6 F_2x = 3.93)


@lru_cache(maxsize=1)
def rcmip_table() -> pd.DataFrame:
    """The vendored RCMIP subset: index (scenario, variable), one column per year 1750..2100."""
    table = pd.read_csv(DATA_FILE).set_index(["Scenario", "Variable"]).drop(columns="Unit")
    table.columns = table.columns.astype(int)
    return table


def available_scenarios() -> tuple[str, ...]:
    """Scenarios the builder can make: the three historical experiments and the vendored SSPs."""
    return HISTORICAL + tuple(sorted(rcmip_table().index.get_level_values(0).unique()))


def scenario_years(name: str) -> np.ndarray:
    """Output years: 1850-2014 for historical experiments, 2015-2100 for SSPs."""
    return (
        np.arange(CUMULATIVE_FROM, HIST_END + 1)
        if name in HISTORICAL
        else np.arange(HIST_END + 1, LAST_YEAR + 1)
    )


@dataclass(frozen=True)
class Pathway:
    """Annual drivers of one scenario from 1750 (the EBM start) to its last output year."""

    name: str
    years: np.ndarray
    erf_total: np.ndarray  # W m-2
    erf_aerosol: np.ndarray  # W m-2
    co2_emissions: np.ndarray  # Mt CO2 / yr
    ch4_emissions: np.ndarray  # Mt CH4 / yr
    so2_emissions: np.ndarray  # Mt SO2 / yr
    bc_emissions: np.ndarray  # Mt BC / yr

    def output_slice(self) -> slice:
        """Positions of the output years in `years`."""
        out = scenario_years(self.name)
        return slice(int(out[0] - FIRST_YEAR), int(out[-1] - FIRST_YEAR) + 1)

    def scalar_inputs(self) -> np.ndarray:
        """ClimateBench global inputs per output year: cumulative CO2 since 1850 (GtCO2), CH4 (GtCH4/yr)."""
        since = int(CUMULATIVE_FROM - FIRST_YEAR)
        cumulative = np.concatenate([np.zeros(since), np.cumsum(self.co2_emissions[since:])]) / 1000.0
        return np.stack([cumulative, self.ch4_emissions / 1000.0], axis=-1)[self.output_slice()]


def pathway(name: str) -> Pathway:
    """Drivers of a scenario; hist-GHG keeps only greenhouse-gas forcing, hist-aer only aerosols."""
    if name not in available_scenarios():
        raise KeyError(name)
    table = rcmip_table()
    source = HIST_SOURCE if name in HISTORICAL else name
    last = HIST_END if name in HISTORICAL else LAST_YEAR
    years = np.arange(FIRST_YEAR, last + 1)

    def row(variable: str) -> np.ndarray:
        return table.loc[(source, variable), years].to_numpy(np.float64)

    zeros = np.zeros(years.size)
    total, aer = row(ERF), row(AER_ERF)
    emissions = {k: row(f"Emissions|{k}") for k in ("CO2", "CH4", "Sulfur", "BC")}
    if name == "hist-GHG":
        total, aer = sum(row(v) for v in GHG_ERF), zeros
        emissions["Sulfur"], emissions["BC"] = zeros, zeros
    elif name == "hist-aer":
        total = aer
        emissions["CO2"], emissions["CH4"] = zeros, zeros
    return Pathway(
        name, years, total, aer, emissions["CO2"], emissions["CH4"], emissions["Sulfur"], emissions["BC"]
    )


@lru_cache(maxsize=32)
def calibrated_transfer(ecs: float, tcr: float) -> tuple[float, float, float]:
    """Layer heat exchange (W m-2 K-1) giving the requested ECS and TCR (K) in FaIR's emergent parameters."""
    feedback = FORCING_4CO2 / 2 / ecs

    def tcr_gap(transfer: float) -> float:
        m = ebm(ecs, tcr, transfer=(feedback, transfer, DEEP_TRANSFER))
        m.emergent_parameters()
        return float(m.tcr) - tcr

    return feedback, brentq(tcr_gap, 0.05, 20.0, xtol=1e-8), DEEP_TRANSFER


def ebm(
    ecs: float,
    tcr: float,
    stochastic: bool = False,
    seed: int | None = None,
    sigma_eta: float = 0.5,
    sigma_xi: float = 0.5,
    gamma: float = 2.0,
    transfer: tuple[float, float, float] | None = None,
) -> EnergyBalanceModel:
    """FaIR 2's 3-layer energy balance model calibrated to the given ECS and TCR (K)."""
    return EnergyBalanceModel(
        ocean_heat_capacity=OCEAN_HEAT_CAPACITY,
        ocean_heat_transfer=transfer or calibrated_transfer(ecs, tcr),
        deep_ocean_efficacy=DEEP_OCEAN_EFFICACY,
        forcing_4co2=FORCING_4CO2,
        stochastic_run=stochastic,
        sigma_eta=sigma_eta,
        sigma_xi=sigma_xi,
        gamma_autocorrelation=gamma,
        seed=seed,
    )


def member_seed(seed: int, member: int, scenario: str) -> int:
    """A 32-bit seed for one (member, scenario) stream, stable across processes."""
    return int(np.random.SeedSequence([seed, member, zlib.crc32(scenario.encode())]).generate_state(1)[0])


def _run(model: EnergyBalanceModel, forcing: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
    """The recursion of `EnergyBalanceModel.run` with its noise drawn once (run() redraws it every step).

    Rows are [stochastic forcing, layer temperatures] per year; row 0 is `state` (zeros by default).
    """
    model.add_forcing(forcing, timestep=1)
    step, push, noise = model.eb_matrix_d, model.forcing_vector_d, model.stochastic_d
    solution = np.zeros((forcing.size, model.n_matrix))
    if state is not None:
        solution[0] = state
    for i in range(1, forcing.size):
        solution[i] = step @ solution[i - 1] + push * forcing[i - 1] + noise[i - 1]
    return solution


@dataclass(frozen=True)
class GlobalResponse:
    """Global-mean surface temperature anomalies (K) of one member over the scenario's output years."""

    total: np.ndarray
    aerosol: np.ndarray

    @property
    def other(self) -> np.ndarray:
        """All but the aerosol-forced part: greenhouse gases, natural forcing, internal variability."""
        return self.total - self.aerosol


def global_response(
    name: str, member: int, seed: int, ecs: float, tcr: float, sigma_eta: float, sigma_xi: float
) -> GlobalResponse:
    """FaIR 2 response of one member: stochastic total and deterministic aerosol part, on output years."""
    path = pathway(name)
    out = path.output_slice()
    aerosol = _run(ebm(ecs, tcr), path.erf_aerosol)[:, 1]

    def stochastic(scenario: str) -> EnergyBalanceModel:
        return ebm(ecs, tcr, True, member_seed(seed, member, scenario), sigma_eta, sigma_xi)

    if name in HISTORICAL:
        total = _run(stochastic(name), path.erf_total)[:, 1]
    else:
        hist = pathway("historical")
        branch = _run(stochastic("historical"), hist.erf_total)[-1]
        future = _run(stochastic(name), path.erf_total[HIST_END - FIRST_YEAR :], state=branch)[1:, 1]
        total = np.concatenate([np.zeros(HIST_END + 1 - FIRST_YEAR), future])
    return GlobalResponse(total[out], aerosol[out])
