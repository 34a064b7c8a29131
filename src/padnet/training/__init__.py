"""The training tier: run configs, datasets, the trainer and its checkpoints, data-parallel runs, the
callbacks for the transformers `Trainer` and Lightning, and Hugging Face fine-tuning. Builds on the core
package (`padnet`) and never the other way round."""
