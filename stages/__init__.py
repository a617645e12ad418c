"""DVC stages of the MNIST-basics pipeline; run each as `python -m stages.<name>`."""
