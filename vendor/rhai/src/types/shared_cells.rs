//! _(proxy-rhai patch 2)_ Breaking the reference cycles closures can make.
//!
//! A closure captures variables by turning them into shared cells (`Rc<RefCell<Dynamic>>`). A
//! closure stored in a variable it captures (`let f = 0; f = || f;`) is a cycle `Rc` never
//! frees, so a host running one script per request would leak on every request. The host
//! records the cells a unit of work creates and, when that work is over and nothing outside it
//! can hold them any more, empties the ones still alive: those are exactly the cycles.
#![cfg(not(feature = "no_closure"))]
#![cfg(not(feature = "sync"))]

use crate::{Dynamic, Locked, Shared};
use std::cell::RefCell;
use std::rc::{Rc, Weak};
#[cfg(feature = "no_std")]
use std::prelude::v1::*;

std::thread_local! {
    /// Where [`record`] puts new cells: the [`SharedCells`] being recorded into, if any.
    static RECORDING: RefCell<Option<Vec<Weak<Locked<Dynamic>>>>> = const { RefCell::new(None) };
}

/// Remember a new shared cell, if some [`SharedCells::record`] is running.
pub(crate) fn record(cell: &Shared<Locked<Dynamic>>) {
    RECORDING.with(|recording| {
        if let Ok(mut recording) = recording.try_borrow_mut() {
            if let Some(cells) = recording.as_mut() {
                // Forget cells already freed before growing, so a long loop making closures
                // keeps only the live ones.
                if cells.len() == cells.capacity() {
                    cells.retain(|cell| cell.strong_count() > 0);
                }
                cells.push(Rc::downgrade(cell));
            }
        }
    });
}

/// The shared cells created while running some work, to be emptied when it is over.
///
/// ```
/// use rhai::{Engine, SharedCells};
///
/// let engine = Engine::new();
/// let mut cells = SharedCells::default();
/// cells.record(|| engine.run("let f = 0; f = || f;")).unwrap();
/// assert_eq!(cells.release(), 1); // the cycle, broken
/// ```
#[derive(Debug, Default)]
pub struct SharedCells(Vec<Weak<Locked<Dynamic>>>);

impl SharedCells {
    /// Run `work`, adding to this set every shared cell it creates.
    ///
    /// Calls nest: an inner `record` collects into its own set until it returns.
    pub fn record<R>(&mut self, work: impl FnOnce() -> R) -> R {
        /// Puts the outer recording back even if `work` unwinds.
        struct Restore<'a> {
            cells: &'a mut SharedCells,
            outer: Option<Vec<Weak<Locked<Dynamic>>>>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                self.cells.0 = RECORDING
                    .with(|recording| recording.replace(outer))
                    .unwrap_or_default();
            }
        }

        let mine = std::mem::take(&mut self.0);
        let outer = RECORDING.with(|recording| recording.replace(Some(mine)));
        let _restore = Restore { cells: self, outer };
        work()
    }

    /// Empty every recorded cell that is still alive and forget them all; returns how many
    /// were alive. Call it only when nothing outside the recorded work can still hold them.
    pub fn release(&mut self) -> usize {
        let mut alive = 0;
        for cell in std::mem::take(&mut self.0) {
            let Some(cell) = cell.upgrade() else { continue };
            alive += 1;
            // Take the value out before dropping it: dropping it may drop other cells.
            let value = cell.try_borrow_mut().map(|mut value| value.take());
            drop(cell);
            drop(value);
        }
        alive
    }
}
