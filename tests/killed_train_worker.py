"""A tiny training run that kill -9s itself (run by tests/test_train.py).

  python tests/killed_train_worker.py WORKDIR DATA_DIR MANUAL_DIR NUM_STEPS CHECKPOINT_EVERY KILL_AT

Trains configs/testing.py and sends itself SIGKILL right after logging step KILL_AT (metrics.jsonl
and TensorBoard events), once the checkpoint before it is on disk: what a preemption or an OOM
killer leaves behind.
"""

import os
import pathlib
import signal
import sys
import time


def main() -> None:
  workdir, data_dir, manual_dir = sys.argv[1:4]
  num_steps, checkpoint_every, kill_at = (int(a) for a in sys.argv[4:7])
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top

  config = testing.get_config()
  config.data.data_dir, config.data.manual_dir = data_dir, manual_dir
  config.train.num_steps = num_steps
  config.train.checkpoint_every = checkpoint_every
  # The last checkpoint before step KILL_AT (a checkpoint at KILL_AT itself is saved after the
  # step is logged, which is when this process dies).
  last_checkpoint = pathlib.Path(workdir, "checkpoints",
                                 str((kill_at - 1) // checkpoint_every * checkpoint_every))
  write_jsonl = train._write_jsonl  # pylint: disable=protected-access
  create_writer = train.metric_writers.create_default_writer
  writers = []

  def recorded_writer(*args, **kwargs):
    writers.append(create_writer(*args, **kwargs))
    return writers[-1]

  def write_then_die(path, record):
    write_jsonl(path, record)
    if record["step"] == kill_at:
      writers[-1].flush()  # The TensorBoard events up to the kill are on disk, as they may be.
      deadline = time.time() + 120  # Saves are asynchronous: wait for the one to resume from.
      while not last_checkpoint.is_dir() and time.time() < deadline:
        time.sleep(0.1)
      if not last_checkpoint.is_dir():
        sys.exit(f"{last_checkpoint} did not appear within 120 s")
      os.kill(os.getpid(), signal.SIGKILL)

  train._write_jsonl = write_then_die  # pylint: disable=protected-access
  train.metric_writers.create_default_writer = recorded_writer
  train.train_and_evaluate(config, workdir)
  sys.exit("not killed")


if __name__ == "__main__":
  main()
