//! A restarted daemon takes over the allocations its predecessor pinned (their relayed ports
//! bound again, their counters carried on); without a `turn:` section it removes them.

use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::warn;

use super::{
    core::{TurnCore, clock},
    persist,
    server::Change,
};
use crate::dataplane::turn_maps::TurnMaps;

/// Takes over the allocations pinned by a previous daemon; returns how many.
/// TURN is not configured: removes what a previous daemon left in the pinned maps, so the fast
/// path stops relaying allocations nobody manages.
pub fn forget_pinned(pin_dir: &std::path::Path) -> Result<()> {
    let Ok(mut maps) = TurnMaps::open_pinned(pin_dir) else {
        return Ok(());
    };
    let removed = maps
        .clear()
        .context("removing TURN allocations from the pinned maps")?;
    if removed > 0 {
        warn!(
            removed,
            "TURN is not configured: ended the allocations a previous daemon left"
        );
    }
    Ok(())
}

pub(super) fn adopt(core: &Arc<TurnCore>) -> usize {
    let Some(maps) = &core.maps else {
        return 0;
    };
    let records = match maps.lock().unwrap_or_else(|p| p.into_inner()).all() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "reading pinned TURN allocations failed");
            return 0;
        }
    };
    let clock = clock();
    let mut adopted = 0;
    for record in records {
        let slot = record.allocation.slot;
        let allocation = persist::from_record(&record, |v6| core.listen[usize::from(v6)], &clock);
        let taken = {
            let mut server = core.server.lock().unwrap_or_else(|p| p.into_inner());
            let mut sockets = core.sockets.lock().unwrap_or_else(|p| p.into_inner());
            match allocation.map(|a| server.adopt(a, &mut *sockets)) {
                Some(true) => {
                    let user = maps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .userspace_stats(slot)
                        .unwrap_or_default();
                    core.counters.restore(slot, user.packets, user.bytes);
                    core.mirror(&server, Change::Updated(slot), &clock, true);
                    true
                }
                _ => false,
            }
        };
        if taken {
            adopted += 1;
        } else {
            warn!(
                slot,
                "pinned TURN allocation cannot be adopted (TCP client, or port taken): removing it"
            );
            let _ = maps.lock().unwrap_or_else(|p| p.into_inner()).delete(slot);
        }
    }
    adopted
}
