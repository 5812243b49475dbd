"""tagvision: self-hosted image classification, compatible with Azure Custom Vision."""

__version__ = "0.1.0"
