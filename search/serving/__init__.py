"""The champion for use: exported to the Model Registry, served as a pyfunc on raw images,
compared."""
