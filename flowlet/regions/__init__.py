"""Regional anatomy of real and synthetic brains: atlas, tissue segmentation, the paper's paired analysis,
age trajectories, age fidelity, realism and diversity, and memorisation (`flowlet regions`)."""
