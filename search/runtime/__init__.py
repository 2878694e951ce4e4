"""What a worker process needs around a study: its host and memory, devices, URLs and storages."""
