"""The artifact store: content-addressed folders, manifests with lineage, atomic publish."""

from .store import ArtifactStore, RunDir, env_info, file_sha256, tree_digest, tree_listing

__all__ = ["ArtifactStore", "RunDir", "env_info", "file_sha256", "tree_digest", "tree_listing"]
