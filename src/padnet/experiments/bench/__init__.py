"""`padnet bench`: speed and memory of padnet's layers and models (run), the MoE layers (moe), and the
interleaved-rounds timing they share (timing)."""
