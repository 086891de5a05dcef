"""Versions of a product bundle: every calibration (and, later, teach and refit) writes a new
sealed bundle beside the old ones, and a pointer says which one the stations load.

    products/<name>/                 version 1: the bundle as built (today's layout, unchanged)
        manifest.yaml, model.onnx, thresholds.yaml, ...
        versions/
            2/  3/ ...               later versions, each a complete sealed bundle whose
                                     manifest records where it came from (``version:``)
            active.yaml              which version is active; absent: version 1
            .new-<n>/                a version being written (never listed, removed when stale)
            .old-<n>/                a pruned version being deleted
            .lock                    held while a version is written, activated or pruned

``layout`` finds versions and reads and writes the pointer; ``store`` writes versions
crash-safely, activates and prunes them; ``listing`` says what each one is. The modules
import in that order; ``inspectd.bundle`` imports ``layout`` only.
"""
