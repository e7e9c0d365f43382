"""A decoder-only byte-level transformer LM on CPython's documentation text, every algorithm (issue 14).

    python launch.py --config configs/transformer_text.py           # dense data parallel, Adam
    python launch.py --config configs/transformer_text.py:sfb_all   # SFB on every projection (attention too)
    python launch.py --config configs/transformer_text.py:dho2      # DHO2 over Adam

Data: ``pydoc_data.topics`` (ships with Python, no download), UTF-8 bytes, first 90% train and
last 10% validate (by position), windows of ``seq_len + 1`` = 65 bytes (``common/text.py``).
Model (``common.models.TransformerLM``): embedding + learned positions, ``num_layers`` pre-LN
blocks of ``nn.MultiHeadDotProductAttention`` (causal mask; q/k/v/out are ``nn.DenseGeneral``)
and a 4x MLP, untied output. ``test_bpc`` in metrics and summary is the validation loss / ln 2.
Args as ``configs/cnn_digits.py`` (``ARGS``). Under the payload rule SFB factors nothing here:
a layer's rows are all batch x sequence positions (4 x 64 = 256 per device), far above the
break-even P·b·(J+D) < J·D; ``sfb_all`` forces the factors to show their bytes.
"""
from configs.cnn_digits import with_algorithm


def text_transformer(config):
  config.dataset = "text"
  config.test_fraction = 0.1
  config.model = "transformer"
  config.seq_len = 64
  config.batch_size = 32          # windows; 4 per device = 256 token rows per device
  config.num_steps = 200
  config.log_every = 25
  config.eval_every = 100
  config.checkpoint_every = 0
  return config


def get_config(arg=None):
  # sign_lr 0.03: at 0.1 the 1-bit GC run on the 2-block default ended 50 steps at test loss 6.33 nats/byte,
  # above the uniform ln 256 = 5.55; at 0.03 at 3.49 (benchmarks.real_models, BUILD_NOTES "Real models")
  return with_algorithm(arg, text_transformer, adam_lr=2e-3, sign_lr=0.03, sign_rows=128, k=4)
