"""Deployment: the compact inference form of a trained model (`deploy`) and export to ONNX and TorchScript
(`export`)."""
