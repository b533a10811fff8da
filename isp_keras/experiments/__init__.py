"""The paper's experiments as commands: Table 1 (`table`), noise sweep (`sweep`), ablation (`ablation`), Table 2
(`table2`)."""
