"""A study from start to end: created or continued, searched, its dead workers' trials recovered."""
