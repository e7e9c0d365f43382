"""Test session setup: 8 simulated CPU devices, set before JAX starts its backend."""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# One persistent compilation cache per test session (jax's own), shared by the xdist workers and by the
# launch.py processes tests start (they inherit the environment): a program another process already
# compiled is loaded instead of compiled again (the same executable, so every result is unchanged).
# Only programs that took >= 0.5 s to compile are stored: jax's cache key ignores source locations, so
# tests that read function names from small synthetic programs (tests/test_comm.py) compile their own.
# The directory is removed when the session ends (pytest_unconfigure).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-test-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

# Tests whose property a cheaper test in the default tier already checks, moved to the slow tier
# (`python -m pytest` runs them) to keep the default tier (README's test command) near 20 minutes on 2 cores.
# Each line: the test, and what in the default tier covers its property. Seconds are from the
# clean-clone run of 2026-11-30 (2 shared cores).
SLOW_TIER = {
    # optax's no-recompile check: one transformation per package stays in the default tier
    "tests/test_conformance.py::test_second_update_does_not_recompile[dho2_adam]": "[fosi_hb_replicated]; 22 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[vr_prox_dap_svrg_l1]": "[vr_prox_dap_sgd_l1]; 14 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[vr_prox_tap_svrg_elastic_net]": "[vr_prox_dap_sgd_l1]; 13 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[vr_prox_dap_svrg_pmean_exact]": "[vr_prox_dap_sgd_l1]; 11 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[sign1bit_one_bit_gc_const]": "[sign1bit_signsgd_majority]; 13 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[sign1bit_one_bit_gc_linf]": "[sign1bit_signsgd_majority]; 11 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[sign1bit_ef_signsgd]": "[sign1bit_signsgd_majority]; 8 s",
    "tests/test_conformance.py::test_second_update_does_not_recompile[sign1bit_sgc_exact]": "[sign1bit_signsgd_majority]; 7 s",
    "tests/test_dho_fosi.py::test_compiles_once_and_state_stable": "conformance's no-recompile check on fosi; 21 s",
    # chains and inject_hyperparams: one entry per package stays
    "tests/test_conformance.py::test_chain_and_inject_hyperparams[fosi_hb_replicated]": "[dho2_adam]; 24 s",
    "tests/test_conformance.py::test_chain_and_inject_hyperparams[vr_prox_dap_svrg_l1]": "[vr_prox_tap_svrg_elastic_net], proving ground chains; 17 s",
    "tests/test_conformance.py::test_chain_and_inject_hyperparams[vr_prox_dap_svrg_pmean_exact]": "[vr_prox_tap_svrg_elastic_net]; 8 s",
    "tests/test_conformance.py::test_chain_and_inject_hyperparams[sign1bit_one_bit_gc_linf]": "[sign1bit_one_bit_gc_const]; 11 s",
    # dho: sharded == unsharded and the adapter, one base optimizer / config stays
    "tests/test_dho_sharded.py::test_sharded_equals_unsharded[adam]": "test_bucketed_layout_equals_unsharded, conformance dho2_adam; 48 s",
    "tests/test_dho_sharded.py::test_sharded_equals_unsharded[sgd]": "test_bucketed_layout_equals_unsharded; 31 s",
    "tests/test_dho_sharded.py::test_sharded_equals_unsharded[hb]": "test_bucketed_layout_equals_unsharded (dho2 == fosi "
                                                                  "on one device, P 2 and 8, Adam); 27 s",
    "tests/test_dho.py::test_reference_mlp_sanity_matches_full_hessian": "a sanity reproduction; planted-quadratic eigh tests stay; 30 s",
    "tests/test_dho_base.py::test_base_state_built_from_params[1-adam]": "[8-schedule_free_sgd] (the bug case); 17 s",
    "tests/test_dho_base.py::test_base_state_built_from_params[1-schedule_free_sgd]": "[8-schedule_free_sgd]; 13 s",
    "tests/test_dho_base.py::test_base_state_built_from_params[8-adam]": "[8-schedule_free_sgd]; 12 s",
    "tests/test_dho_adapter.py::test_configs_run_and_learn[dho2_mlp-8]": "[dho2_v2-None], test_harness_configs; 22 s",
    "tests/test_dho_adapter.py::test_configs_run_and_learn[dho_mlp_digits-hb]": "[dho2_v2-None], test_harness_configs; 18 s",
    "tests/test_dho_adapter.py::test_logged_bytes_are_the_branch_each_step_took[dho2_mlp-overrides1]": "[dho2_mlp-overrides0]; 21 s",
    "tests/test_dho_adapter.py::test_logged_bytes_are_the_branch_each_step_took[dho2_mlp-overrides2]": "[dho2_mlp-overrides0]; 18 s",
    # sfb on real layers: the flax attention test and tests/test_real_models.py's CNN test stay
    "tests/test_sfb_general.py::test_transformer_attention_projections_factor_exactly_with_measured_bytes[einsum]": "[flax]; 12 s",
    "tests/test_sfb_general.py::test_cnn_conv_kernels_dense_head_factored_with_measured_bytes": "test_real_models sfb[cnn]; 22 s",
    # real models: seconds from the clean-clone run at f496b47 (2 xdist workers on 2 cores)
    "tests/test_sfb_general.py::test_sharded_sfb_steps_equal_dense_data_parallel_steps[transformer]": "[cnn], attention projections [flax]; 25 s",
    "tests/test_models.py::test_cnn_row_losses_do_not_depend_on_the_rest_of_the_batch": "test_real_models dense sharded step == single-device step [cnn]; 31 s",
    "tests/test_real_models.py::test_every_algorithm_arg_takes_two_steps[cnn-dense]": "test_harness_configs[cnn_digits] (the same config, 3 steps); 16 s",
    "tests/test_real_models.py::test_every_algorithm_arg_takes_two_steps[transformer-dense]": "test_harness_configs[transformer_text], bpc: test_validation_bits_per_character_match_numpy; 12 s",
    # the refresh as its own program: fosi and dho2 with a curvature delay stay
    "tests/test_dho_separate_refresh.py::test_separate_refresh_equals_in_step[dho2]": "test_readme_examples split_step (dho2, W = 1) == train_step; 20 s",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid in SLOW_TIER:
      item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):   # the process that made the cache directory
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
