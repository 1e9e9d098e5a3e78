"""Neural samplers for unnormalised densities: one module per method, shared SDE and masked-CTMC parts."""
