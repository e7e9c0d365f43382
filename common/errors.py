"""The exceptions a user sees for bad input or a failed run, and ``launch.py``'s exit codes."""

EXIT_OK = 0
EXIT_CONFIG = 2      # bad command line, config or workdir: one line naming the field or flag
EXIT_NONFINITE = 3   # loss or parameters stopped being finite; the last good checkpoint is kept
EXIT_PEER = 4        # multi-process: a peer process died, never joined, or a step hung


class ConfigError(ValueError):
  """Invalid configuration: the message names the field and what is allowed."""

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"config.{field}: {message}")


class FlagError(ValueError):
  """A bad command-line flag (or workdir): the message names the flag and what is allowed."""

  def __init__(self, flag: str, message: str):
    self.flag = flag
    super().__init__(f"--{flag}: {message}")


class PeerError(RuntimeError):
  """Multi-process: a peer process is gone (or never joined); the message names it or the step."""
