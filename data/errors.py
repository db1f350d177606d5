"""The errors a user can cause through the data: each message names the path and what to do."""


class DataError(ValueError):
    """The data set cannot be used as configured (bad path, layout, map file or class count)."""


class CorruptImageError(DataError):
    """An image cannot be decoded; the message names the file."""


class NumClassesMismatchError(DataError):
    """MODEL.NUM_CLASSES disagrees with the number of classes found in the data."""
