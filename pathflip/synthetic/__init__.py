"""Generated H&E slides and cohorts with ground truth: textures and pyramidal TIFFs (`textures`), a seeded cohort
with captions, diagnoses and tissue masks (`cohort`), and multiple-choice questions about its slides (`questions`)."""
