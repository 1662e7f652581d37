"""Forecasting ETTh1 (oil temperature "OT", 96 hours ahead from 720) with a WaveNet encoder trained from scratch
on top of a frozen RWKV-7 0.4B (docs/architecture.md, time-series encoder and adapter).

Model: a WaveNet-style causal dilated conv stack (2 stacks of dilations 1..128, receptive field 511,
RevIN normalisation, 256 output channels) trained from scratch (`train_encoder=True`), the series
adapter (MLP with hidden 4·C_in, m = 4 as Table 5 finds best), no compressor (720 series tokens), and
the forecasting head (`model.forecast_horizon = 96`, MSE in normalised units). RWKV-7 0.4B stays frozen:
train.trainable = ("encoder", "adapter", "head"); add "rwkv" to fine-tune it too. Records have no text
turns (`SeriesSource` without a prompt): the loss is the forecast MSE alone.
Our choices where the paper gives no number: lr 1e-3 (100 warmup steps, cosine to 0), batch 32, 10 epochs
of the training windows.

Data: `{data.root}/timeseries/ETTh1.csv` (ETDataset: columns date, HUFL, HULL, MUFL, MULL, LUFL, LULL,
OT; hourly), windows of 720 context + 96 target steps with stride 1, split chronologically 60/20/20.
The usual ETT protocol (12/4/4 months) is exactly this split of the first 14,400 rows
(`head -n 14401 ETTh1.csv`): 8,640 / 2,880 / 2,880 steps, 7,825 training windows (245 steps per epoch
at batch 32) and 2,785 validation windows (88 batches). Validation and test windows look back into the
previous split, as in that protocol.

Expected files (all local):
  {data.root}/timeseries/ETTh1.csv
  weights/rwkv7-world-0.4b.pth        an RWKV-7 0.4B .pth

    python train.py --config configs/timeseries_wavenet.py --workdir runs/timeseries_wavenet --config.data.root=/data
"""

from modrwkv_jax.training.config import base_config, sibling

LOOKBACK, HORIZON = 720, 96  # docs/architecture.md
TRAIN_WINDOWS = 8640 - LOOKBACK - HORIZON + 1  # 7,825 (first 14,400 rows, 60 % train)
BATCH = 32


def get_config():
  common = sibling(__file__, "common")
  c = base_config()
  c.name = "timeseries_wavenet"
  c.seed = 0

  c.model.rwkv = common.real_size_rwkv("0.4B")
  c.model.max_length = common.CONTEXT
  c.model.forecast_horizon = HORIZON
  c.model.modalities = dict(series=dict(
      encoder="wavenet",
      encoder_config=dict(in_channels=1, residual_channels=64, skip_channels=128, out_channels=256, kernel_size=2,
                          dilations=(1, 2, 4, 8, 16, 32, 64, 128), num_stacks=2, revin_affine=True),
      train_encoder=True,  # trained from scratch
      projector=dict(kind="series", compressor=None, hidden_mult=4)))

  c.data.root = ""  # --config.data.root=/path/to/datasets
  c.data.sources = [dict(kind="series", path="{root}/timeseries/ETTh1.csv", weight=1.0,
                         options=dict(context=LOOKBACK, horizon=HORIZON, stride=1, time_column="date",
                                      columns=["OT"], split_fractions=(0.6, 0.2, 0.2)))]
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.max_length = common.CONTEXT
  c.data.truncate = False
  c.data.bucket_window = 1  # every window has the same length
  c.data.on_error = "skip"
  c.data.series.length = LOOKBACK
  c.data.series.horizon = HORIZON
  c.data.series.channels = None  # univariate: one column
  c.data.series.max_items = 1

  c.train.steps = 10 * common.epoch_steps(TRAIN_WINDOWS, BATCH)  # 10 epochs: 2,450 steps
  c.train.batch_size = BATCH
  c.train.trainable = ("encoder", "adapter", "head")
  c.train.forecast_weight = 1.0
  c.train.log_every = 10
  c.train.eval_every = common.epoch_steps(TRAIN_WINDOWS, BATCH)  # once per epoch
  c.train.eval_batches = 88  # the 2,785 validation windows
  c.train.checkpoint_every = 245

  c.optim.lr = 1e-3
  c.optim.warmup = 100
  c.optim.schedule = "cosine"
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.99, 1e-8
  c.optim.weight_decay = 0.0
  c.optim.clip = 1.0

  c.init.rwkv_pth = common.RWKV_PTH["0.4B"]
  return c
