class DataError(ValueError):
    """Data that cannot be used as given; the message names the problem and the fix."""
