"""Fine-tuning: task pipelines (classification, NER, relation extraction, QA), the
shared trainer and the `spanbert-tf finetune` / `spanbert-tf evaluate` commands."""
