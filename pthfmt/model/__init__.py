"""The tensor model: dtypes, devices, storages, tensors, stubs and the object tree."""
