"""Graph rewrites for what sherpa-ncnn's runtime lacks: rule (the Rule/RuleResult shapes), registry (every rule,
in order), driver (plan and apply), and one file per rule family (lstm, zipformer, common)."""
