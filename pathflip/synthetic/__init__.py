"""Generated H&E slides and cohorts with ground truth: textures and pyramidal TIFFs (`textures`), seeded cohorts
with captions, diagnoses and tissue masks (`cohort`; families "lesions" and "hierarchical", whose shared parts are
in `layout`), and multiple-choice questions about their slides (`questions`)."""
