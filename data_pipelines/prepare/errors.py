"""What prepare raises: PrepareError for input, options or an output folder that cannot be
used, ItemFailed for the first unusable item under --on_error=fail."""


class PrepareError(Exception):
  """Input, options or output folder that cannot be used; the message says what to do."""


class ItemFailed(Exception):
  """The first unusable item under --on_error=fail."""

  def __init__(self, key: str, reason: str):
    super().__init__(key, reason)
    self.key, self.reason = key, reason

  def __str__(self) -> str:
    return f"{self.key}: {self.reason}"
