"""The one exception type a user sees for bad input to the harness."""


class ConfigError(ValueError):
  """Invalid configuration: the message names the field and what is allowed."""

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"config.{field}: {message}")
