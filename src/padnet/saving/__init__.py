"""Files: the one model-folder format (`padnet_config.json` + `padnet_model.safetensors`), the codecs of
deployed layers, and atomic writes with safe JSON reading. Everything read back is validated."""
