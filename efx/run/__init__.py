"""A run of `efx extract`, a stage a module: plan -> (nothing to do?) -> engine -> loop -> summary.
efx.api.extract joins them; each stage imports only the ones it follows."""
