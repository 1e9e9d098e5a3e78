"""Coulomb explosion imaging: geometries, charge rules, batched forward model, augmentation, builder, domain."""
