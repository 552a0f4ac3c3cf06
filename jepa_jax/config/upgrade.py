"""Configs saved by earlier versions, brought to today's fields."""


# Fields added after runs were saved without them, with the value that does what those
# runs did: a workdir lacking the field resumes as if it held that value.
ADDED_FIELDS = {"data.exclude_classes": "", "uamix.augment.background": 0.0}
