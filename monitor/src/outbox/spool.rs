//! The spool: what a stop could not deliver, written to `spool_dir` and
//! queued again by the next start.

use super::{Item, Op, Outbox};

impl Outbox {
    /// Every spooled message is delivered (or shed): the spool goes.
    pub(super) fn remove_spool(&self) {
        if let Some(path) = &self.spool {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(spool = %path.display(), "every spooled message delivered; spool removed")
                }
                Err(e) => {
                    tracing::warn!(spool = %path.display(), error = %e, "cannot remove the spool")
                }
            }
        }
    }

    /// Queues what the last stop spooled; returns how many messages.
    ///
    /// # Errors
    /// If the spool exists but cannot be read or decoded.
    pub fn load_spool(&self) -> anyhow::Result<usize> {
        let Some(path) = &self.spool else {
            return Ok(0);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => anyhow::bail!("spool {}: {e}", path.display()),
        };
        let items: Vec<(String, Op)> = rmp_serde::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("spool {}: not a spool file: {e}", path.display()))?;
        let n = items.len();
        self.inner().spooled_pending += n;
        for (deployment, op) in items {
            self.enqueue(deployment, Item { op, spooled: true }, None);
        }
        if n == 0 {
            let _ = std::fs::remove_file(path);
        }
        Ok(n)
    }

    /// Writes what is still queued to the spool (or, without a spool
    /// directory, names every message lost in the log). Returns how many.
    pub fn spool_rest(&self) -> usize {
        let inner = self.inner();
        let items: Vec<(String, Op)> = inner
            .queues
            .iter()
            .flat_map(|(d, q)| {
                q.kv.iter()
                    .chain(q.items.iter())
                    .map(|i| (d.clone(), i.op.clone()))
            })
            .collect();
        drop(inner);
        if items.is_empty() {
            if let Some(path) = &self.spool {
                let _ = std::fs::remove_file(path);
            }
            return 0;
        }
        let n = items.len();
        let Some(path) = &self.spool else {
            for (d, op) in &items {
                tracing::error!(deployment = %d, lost = %op.describe(), "not delivered before the stop, and no spool_dir: lost");
            }
            return n;
        };
        let written = rmp_serde::to_vec(&items)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bytes)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => tracing::warn!(
                messages = n,
                spool = %path.display(),
                "not delivered before the stop: spooled for the next start"
            ),
            Err(e) => {
                for (d, op) in &items {
                    tracing::error!(deployment = %d, lost = %op.describe(), "cannot write the spool ({e}): lost");
                }
            }
        }
        n
    }
}
