"""Tests against real torch (marker ``torch``) and the real safetensors package
(marker ``safetensors``)."""
