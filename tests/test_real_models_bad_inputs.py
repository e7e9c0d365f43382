"""Bad values of the cnn / transformer fields through ``launch.py``: one ``error:`` line naming
the field, no traceback (helpers and rules of ``tests/test_launch_bad_inputs.py``)."""
import concurrent.futures

import pytest

from test_launch_bad_inputs import _assert_one_line, _launch

TEXT = ["--config", "configs/transformer_text.py"]
CNN = ["--config", "configs/cnn_digits.py"]

# (id, argv after launch.py, text the error line must contain)
CASES = [
    ("cnn_bad_arg", ["--config", "configs/cnn_digits.py:adamw"], "unknown config arg 'adamw'; allowed: dense"),
    ("text_bad_arg", ["--config", "configs/transformer_text.py:nope"], "unknown config arg 'nope'"),
    ("heads_do_not_divide", [*TEXT, "--config.num_heads=3"], "config.d_model: must be divisible by num_heads=3"),
    ("seq_len_zero", [*TEXT, "--config.seq_len=0"], "config.seq_len"),
    ("num_layers_zero", [*TEXT, "--config.num_layers=0"], "config.num_layers"),
    ("channels_empty", [*CNN, "--config.channels=()"], "config.channels"),
    ("max_train_rows_negative", [*CNN, "--config.max_train_rows=-1"], "config.max_train_rows"),
    ("transformer_on_digits", [*TEXT, "--config.dataset=digits"], "config.dataset: model 'transformer' and dataset 'text'"),
    ("mlp_on_text", [*TEXT, "--config.model=mlp"], "config.model: model 'transformer' and dataset 'text'"),
    ("cnn_on_breast_cancer", [*CNN, "--config.dataset=breast_cancer"], "config.model: 'cnn' needs square"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  base = tmp_path_factory.mktemp("bad_real")
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(_launch, args, str(base / name)) for name, args, _ in CASES}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name,args,says", CASES, ids=[c[0] for c in CASES])
def test_bad_real_model_field_is_one_line(results, name, args, says):
  proc, _ = results[name]
  _assert_one_line(proc, says)
