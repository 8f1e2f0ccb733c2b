//! Data size checks during evaluation.
#![cfg(not(feature = "unchecked"))]

use super::GlobalRuntimeState;
use crate::types::dynamic::Union;
use crate::{Dynamic, Engine, Position, RhaiResultOf, ERR};
use std::borrow::Borrow;
#[cfg(feature = "no_std")]
use std::prelude::v1::*;

/// How many items a walk through a value visits for one operation (proxy-rhai patch 9). A walk is as long
/// as the value: after every `a.push(x)` the whole of `a` is measured again, so a loop of pushes
/// did quadratic work that the operation count never saw (40,000 pushes: seconds of CPU, well
/// within `max_operations`). Charged to the operation count, walks are bounded by it like the
/// rest of a script's work. A visit costs ~56 wasm instructions (8,000 pushes: 1.79 billion
/// instructions for 32 million visits), a plain operation several hundred: 16 visits are about
/// one operation's work.
pub const WALK_ITEMS_PER_OPERATION: usize = 16;

/// The operations a call that a native function makes back into the engine counts for, besides
/// the operations it runs (proxy-rhai patch 10). `a.map(|x| x + 1)` calls the closure once per
/// item, and `a.contains(v)` calls `==` once per item, each in a fresh copy of the call state
/// with empty caches: ~6,600 and ~7,800 wasm instructions, the cost of 15 or so operations,
/// and they counted one or two. Charged 8, so that a loop of such calls ends within about twice
/// the time of a loop of plain operations, while a script's own `map` over a few thousand items
/// stays well within the default limit.
pub const CALLBACK_OPERATIONS: usize = 8;

/// How many bytes of a string or a blob count as one item of [`data_items`] (proxy-rhai patch 11):
/// 8, so 128 bytes are one operation. A native function's time grows with the data it is given
/// or gives back (`s.contains(x)`, `s.to_upper()`, `s + t`, a blob's `contains`), and one call
/// counted one operation: a loop of `s.to_upper()` on a 4 MB string ran for minutes within
/// `max_operations`. Scanning or copying 128 bytes costs the wasm build about what an operation
/// does (a few hundred instructions).
pub const BYTES_PER_ITEM: usize = 8;

/// The items a value counts for when a function gets it or gives it back (proxy-rhai patch 11): a
/// string or a blob one per [`BYTES_PER_ITEM`] bytes, an array or a map one per element. Not
/// nested: it reads a length, never walks (a nested array is walked by the size checks, which
/// charge their walks).
#[inline(always)]
#[must_use]
pub fn data_items(value: &Dynamic) -> usize {
    match value.0 {
        Union::Str(ref s, ..) => s.heap_len() / BYTES_PER_ITEM,
        #[cfg(not(feature = "no_index"))]
        Union::Blob(ref b, ..) => b.len() / BYTES_PER_ITEM,
        #[cfg(not(feature = "no_index"))]
        Union::Array(ref a, ..) => a.len(),
        #[cfg(not(feature = "no_object"))]
        Union::Map(ref m, ..) => m.len(),
        _ => 0,
    }
}

/// Whether a size check walks through `value` (an array or a map), a walk it charges (proxy-rhai
/// patch 11); other values are measured by their length.
#[inline(always)]
#[must_use]
pub fn is_walked(value: &Dynamic) -> bool {
    match value.0 {
        #[cfg(not(feature = "no_index"))]
        Union::Array(..) => true,
        #[cfg(not(feature = "no_object"))]
        Union::Map(..) => true,
        _ => false,
    }
}

/// Recursively calculate the sizes of an array.
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
///
/// # Panics
///
/// Panics if any interior data is shared (should never happen).
#[cfg(not(feature = "no_index"))]
#[inline]
pub fn calc_array_sizes(array: &crate::Array) -> (usize, usize, usize) {
    let (mut ax, mut mx, mut sx) = (0, 0, 0);

    for value in array {
        ax += 1;

        match value.0 {
            Union::Array(ref a, ..) => {
                let (a, m, s) = calc_array_sizes(a);
                ax += a;
                mx += m;
                sx += s;
            }
            Union::Blob(ref a, ..) => ax += 1 + a.len(),
            #[cfg(not(feature = "no_object"))]
            Union::Map(ref m, ..) => {
                let (a, m, s) = calc_map_sizes(m);
                ax += a;
                mx += m;
                sx += s;
            }
            Union::Str(ref s, ..) => sx += s.len(),
            Union::FnPtr(ref f, ..) => {
                let (a, m, s) = calc_curry_sizes(f);
                ax += a;
                mx += m;
                sx += s;
            }
            #[cfg(not(feature = "no_closure"))]
            Union::Shared(..) => {
                unreachable!("shared values discovered within data")
            }
            _ => (),
        }
    }

    (ax, mx, sx)
}
/// Recursively calculate the sizes of a map.
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
///
/// # Panics
///
/// Panics if any interior data is shared (should never happen).
#[cfg(not(feature = "no_object"))]
#[inline]
pub fn calc_map_sizes(map: &crate::Map) -> (usize, usize, usize) {
    let (mut ax, mut mx, mut sx) = (0, 0, 0);

    for value in map.values() {
        mx += 1;

        match value.0 {
            #[cfg(not(feature = "no_index"))]
            Union::Array(ref a, ..) => {
                let (a, m, s) = calc_array_sizes(a);
                ax += a;
                mx += m;
                sx += s;
            }
            #[cfg(not(feature = "no_index"))]
            Union::Blob(ref a, ..) => ax += 1 + a.len(),
            Union::Map(ref m, ..) => {
                let (a, m, s) = calc_map_sizes(m);
                ax += a;
                mx += m;
                sx += s;
            }
            Union::Str(ref s, ..) => sx += s.len(),
            Union::FnPtr(ref f, ..) => {
                let (a, m, s) = calc_curry_sizes(f);
                ax += a;
                mx += m;
                sx += s;
            }
            #[cfg(not(feature = "no_closure"))]
            Union::Shared(..) => {
                unreachable!("shared values discovered within data")
            }
            _ => (),
        }
    }

    (ax, mx, sx)
}

/// Recursively calculate the sizes of the arguments curried into a function pointer, each
/// counted as an array item (proxy-rhai patch 1: curried arguments are data too, and
/// `f = f.curry(f)` doubles it each time).
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
///
/// A closure's captured variables are shared cells, measured where they are assigned, not here.
pub fn calc_curry_sizes(fn_ptr: &crate::FnPtr) -> (usize, usize, usize) {
    let (mut ax, mut mx, mut sx) = (0, 0, 0);

    for value in fn_ptr.iter_curry() {
        ax += 1;

        let (a, m, s) = match value.0 {
            #[cfg(not(feature = "no_closure"))]
            Union::Shared(..) => (0, 0, 0),
            _ => calc_data_sizes(value, false),
        };
        ax += a;
        mx += m;
        sx += s;
    }

    (ax, mx, sx)
}

/// Recursively calculate the sizes of a value.
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
///
/// # Panics
///
/// Panics if any interior data is shared (should never happen).
#[inline]
pub fn calc_data_sizes(value: &Dynamic, _top: bool) -> (usize, usize, usize) {
    match value.0 {
        #[cfg(not(feature = "no_index"))]
        Union::Array(ref arr, ..) => calc_array_sizes(arr),
        #[cfg(not(feature = "no_index"))]
        Union::Blob(ref blob, ..) => (blob.len(), 0, 0),
        #[cfg(not(feature = "no_object"))]
        Union::Map(ref map, ..) => calc_map_sizes(map),
        Union::Str(ref s, ..) => (0, 0, s.len()),
        Union::FnPtr(ref f, ..) => calc_curry_sizes(f),
        #[cfg(not(feature = "no_closure"))]
        // proxy-rhai patch 1: a cell being written right now is measured when the write is checked.
        Union::Shared(..) if _top => value
            .read_lock::<Dynamic>()
            .map_or((0, 0, 0), |inner| calc_data_sizes(&inner, true)),
        #[cfg(not(feature = "no_closure"))]
        Union::Shared(..) => {
            unreachable!("shared values discovered within data: {}", value)
        }
        _ => (0, 0, 0),
    }
}

/// The sizes of a value, as [`calc_data_sizes`] counts them, and how deeply it nests, in one
/// walk (proxy-rhai patch 1).
///
/// Depth counts arrays, maps and function pointers' curried arguments, looking through shared
/// cells: a plain value is at depth 0, `[1]` at 1. The walk stops once it is deeper than
/// `limit` (the sizes are then partial: the value is refused anyway), so an over-deep value
/// costs at most `limit + 1` levels of recursion. A cell met again on the way down (a closure
/// that captures itself) is a cycle, not depth: it ends that branch. What a cell below the top
/// holds is a captured variable, sized where it is assigned, so it only counts for depth.
#[must_use]
pub fn calc_data_sizes_and_depth(value: &Dynamic, limit: usize) -> ((usize, usize, usize), usize) {
    let (sizes, depth, _) = walk_data(value, limit);
    (sizes, depth)
}

/// [`calc_data_sizes_and_depth`], and the number of items the walk visited (proxy-rhai patch 9).
fn walk_data(value: &Dynamic, limit: usize) -> ((usize, usize, usize), usize, usize) {
    struct Walk {
        sizes: (usize, usize, usize),
        limit: usize,
        visited: usize,
        /// Cells on the way from the top to the value being walked.
        path: Vec<*const ()>,
    }

    impl Walk {
        fn items<'a>(
            &mut self,
            values: impl Iterator<Item = &'a Dynamic>,
            level: usize,
            in_map: bool,
            count: bool,
        ) -> usize {
            let mut max = level;
            for value in values {
                self.visited += 1;
                if count && in_map {
                    self.sizes.1 += 1;
                } else if count {
                    self.sizes.0 += 1;
                }
                max = max.max(self.value(value, level, count));
                if max > self.limit {
                    break;
                }
            }
            max
        }

        fn value(&mut self, value: &Dynamic, level: usize, count: bool) -> usize {
            if level > self.limit {
                return level;
            }
            match value.0 {
                #[cfg(not(feature = "no_index"))]
                Union::Array(ref a, ..) => self.items(a.iter(), level + 1, false, count),
                // Inside a container a blob counts one more item, as in `calc_array_sizes`.
                #[cfg(not(feature = "no_index"))]
                Union::Blob(ref b, ..) if count => {
                    self.sizes.0 += b.len() + usize::from(level > 0);
                    level
                }
                #[cfg(not(feature = "no_object"))]
                Union::Map(ref m, ..) => self.items(m.values(), level + 1, true, count),
                Union::Str(ref s, ..) if count => {
                    self.sizes.2 += s.len();
                    level
                }
                Union::FnPtr(ref f, ..) => self.items(f.iter_curry(), level + 1, false, count),
                #[cfg(not(feature = "no_closure"))]
                Union::Shared(ref cell, ..) => {
                    let id = crate::Shared::as_ptr(cell).cast::<()>();
                    if self.path.contains(&id) {
                        return level;
                    }
                    // A cell borrowed for writing right now is being worked on by the caller,
                    // and is measured when that write is checked.
                    let Some(inner) = value.read_lock::<Dynamic>() else {
                        return level;
                    };
                    self.path.push(id);
                    let depth = self.value(&inner, level, count && level == 0);
                    self.path.pop();
                    depth
                }
                _ => level,
            }
        }
    }

    let mut walk = Walk {
        sizes: (0, 0, 0),
        limit,
        visited: 0,
        path: Vec::new(),
    };
    let depth = walk.value(value, 0, true);
    (walk.sizes, depth, walk.visited)
}

/// The error [`Engine::throw_on_size`] gives for a string over the limit (proxy-rhai patch 6).
#[cold]
#[inline(never)]
fn string_too_long(pos: Position) -> crate::RhaiError {
    ERR::ErrorDataTooLarge("Length of string".to_string(), pos).into()
}

impl Engine {
    /// Raise an error if any data size exceeds limit.
    ///
    /// [`Position`] in [`EvalAltResult`][crate::EvalAltResult] is always [`NONE`][Position::NONE]
    /// and should be set afterwards.
    #[cfg(not(feature = "unchecked"))]
    pub(crate) fn throw_on_size(&self, (_arr, _map, s): (usize, usize, usize)) -> RhaiResultOf<()> {
        if self.limits.string_len.map_or(false, |max| s > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Length of string".to_string(), Position::NONE).into(),
            );
        }

        #[cfg(not(feature = "no_index"))]
        if self.limits.array_size.map_or(false, |max| _arr > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Size of array/BLOB".to_string(), Position::NONE).into(),
            );
        }

        #[cfg(not(feature = "no_object"))]
        if self.limits.map_size.map_or(false, |max| _map > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Size of object map".to_string(), Position::NONE).into(),
            );
        }

        Ok(())
    }

    /// Raise an error if a value nested `depth` levels deep is over the limit (proxy-rhai patch 1).
    ///
    /// [`Position`] in [`EvalAltResult`][crate::EvalAltResult] is always [`NONE`][Position::NONE]
    /// and should be set afterwards.
    pub(crate) fn throw_on_depth(&self, depth: usize) -> RhaiResultOf<()> {
        if self.limits.value_depth.map_or(false, |max| depth > max.get()) {
            return Err(ERR::ErrorDataTooLarge(
                "Nesting depth of value".to_string(),
                Position::NONE,
            )
            .into());
        }
        Ok(())
    }

    /// The sizes of a value and, when a depth limit is set, its nesting depth (0 otherwise),
    /// for [`throw_on_size`][Engine::throw_on_size] and
    /// [`throw_on_depth`][Engine::throw_on_depth] (proxy-rhai patch 9). Every walk is charged to
    /// the operation count ([`WALK_ITEMS_PER_OPERATION`]).
    #[inline]
    pub(crate) fn data_sizes_and_depth(&self, value: &Dynamic) -> ((usize, usize, usize), usize) {
        let (sizes, depth, visited) = match self.limits.value_depth {
            Some(max) => walk_data(value, max.get()),
            None => {
                let sizes = calc_data_sizes(value, true);
                (sizes, 0, sizes.0 + sizes.1)
            }
        };
        self.charge_walk(visited);
        (sizes, depth)
    }

    /// Adds `items` visited by a walk through a value to the tally the operations take from
    /// (proxy-rhai patch 9).
    #[inline(always)]
    pub(crate) fn charge_walk(&self, items: usize) {
        if items > 0 {
            self.data_walked
                .fetch_add(items, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Charges a call a native function makes back into the engine ([`CALLBACK_OPERATIONS`]).
    #[inline(always)]
    pub(crate) fn charge_callback(&self) {
        self.charge_walk(CALLBACK_OPERATIONS * WALK_ITEMS_PER_OPERATION);
    }

    /// Charges the data `values` hold ([`data_items`]) to the tally the operations take from
    /// (proxy-rhai patch 11): what a function call gets and gives back.
    #[inline(always)]
    pub(crate) fn charge_data<'a>(&self, values: impl IntoIterator<Item = &'a Dynamic>) {
        self.charge_walk(values.into_iter().map(data_items).sum());
    }

    /// The operations that the walks since the last operation owe, taken from the tally
    /// (proxy-rhai patch 9).
    #[inline(always)]
    fn walk_operations(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let walked = self.data_walked.load(Relaxed);
        if walked < WALK_ITEMS_PER_OPERATION {
            return 0;
        }
        self.data_walked
            .store(walked % WALK_ITEMS_PER_OPERATION, Relaxed);
        (walked / WALK_ITEMS_PER_OPERATION) as u64
    }

    /// Check whether the size of a [`Dynamic`] is within limits.
    /// proxy-rhai patch 19: public under `internals`, for the plugin's compiler.
    #[cfg(not(feature = "unchecked"))]
    #[crate::expose_under_internals]
    #[inline(always)]
    fn check_data_size<T: Borrow<Dynamic>>(
        &self,
        value: T,
        pos: Position,
    ) -> RhaiResultOf<T> {
        // proxy-rhai patch 6 (speed): a value holding no data (a number, `()`, ...) is within any
        // limit, a string is its length; only the others are measured, out of line.
        match value.borrow().0 {
            Union::Str(ref s, ..) => {
                return match self.limits.string_len {
                    Some(max) if s.len() > max.get() => Err(string_too_long(pos)),
                    _ => Ok(value),
                }
            }
            Union::FnPtr(..) => (),
            #[cfg(not(feature = "no_index"))]
            Union::Array(..) | Union::Blob(..) => (),
            #[cfg(not(feature = "no_object"))]
            Union::Map(..) => (),
            #[cfg(not(feature = "no_closure"))]
            Union::Shared(..) => (),
            _ => return Ok(value),
        }
        self.check_data_size_of(value.borrow(), pos)?;
        Ok(value)
    }

    /// [`check_data_size`][Engine::check_data_size] of a value that may hold data.
    #[cfg(not(feature = "unchecked"))]
    #[inline(never)]
    fn check_data_size_of(&self, value: &Dynamic, pos: Position) -> RhaiResultOf<()> {
        // If no data size limits, just return
        if !self.has_data_size_limit() {
            return Ok(());
        }

        // proxy-rhai patch 6 (speed): a blob is its own size, without the walk.
        let sizes = match value.0 {
            #[cfg(not(feature = "no_index"))]
            Union::Blob(ref b, ..) => Some((b.len(), 0, 0)),
            _ => None,
        };
        if let Some(sizes) = sizes {
            return self
                .throw_on_size(sizes)
                .map_err(|err| err.fill_position(pos));
        }

        let (sizes, depth) = self.data_sizes_and_depth(value);

        self.throw_on_size(sizes)
            .and_then(|()| self.throw_on_depth(depth))
            .map_err(|err| err.fill_position(pos))
    }

    /// Raise an error if the size of a [`Dynamic`] is out of limits (if any).
    ///
    /// Not available under `unchecked`.
    #[cfg(not(feature = "unchecked"))]
    #[inline(always)]
    pub fn ensure_data_size_within_limits(&self, value: &Dynamic) -> RhaiResultOf<()> {
        self.check_data_size(value, Position::NONE).map(|_| ())
    }

    /// Check if the number of operations stay within limit.
    /// proxy-rhai patch 19: public under `internals`, for the plugin's compiler.
    #[crate::expose_under_internals]
    #[inline(always)]
    fn track_operation(
        &self,
        global: &mut GlobalRuntimeState,
        pos: Position,
    ) -> RhaiResultOf<()> {
        // proxy-rhai patch 10: an atomic count goes up the same way through a shared state.
        #[cfg(atomic_ops_count)]
        return self.track_operation_shared(global, pos);

        #[cfg(not(atomic_ops_count))]
        {
            // proxy-rhai patch 10: one operation, plus what the size walks since the last one owe.
            let step = 1 + self.walk_operations();
            global.num_operations += step;
            self.check_operations(global.num_operations, step, pos)
        }
    }

    /// [`track_operation`][Engine::track_operation] on a state shared with the caller, as a
    /// native function's context holds it (proxy-rhai patch 10).
    #[cfg(atomic_ops_count)]
    #[inline(always)]
    pub(crate) fn track_operation_shared(
        &self,
        global: &GlobalRuntimeState,
        pos: Position,
    ) -> RhaiResultOf<()> {
        self.track_operations_shared(global, 1, pos)
    }

    /// Counts `count` operations at once, on a state shared with the caller (proxy-rhai patch 15):
    /// the work a native function is about to do, so that the limit stops it before it starts.
    #[cfg(atomic_ops_count)]
    #[inline(always)]
    pub(crate) fn track_operations_shared(
        &self,
        global: &GlobalRuntimeState,
        count: u64,
        pos: Position,
    ) -> RhaiResultOf<()> {
        // proxy-rhai patch 15: the operations, plus what the size walks since the last one owe.
        let step = count + self.walk_operations();
        let num_operations = global
            .num_operations
            .fetch_add(step, std::sync::atomic::Ordering::SeqCst)
            + step;
        self.check_operations(num_operations, step, pos)
    }

    /// The limit and the progress callback, for a count that just went up by `step`.
    #[inline(always)]
    fn check_operations(&self, num_operations: u64, step: u64, pos: Position) -> RhaiResultOf<()> {
        // Guard against too many operations
        #[cfg(not(feature = "unchecked"))]
        if self.max_operations() > 0 && num_operations > self.max_operations() {
            return Err(ERR::ErrorTooManyOperations(pos).into());
        }

        if let Some(progress) = self.progress.as_ref() {
            // proxy-rhai patch 9 (speed): `Engine::on_progress_every`: only when the count passed
            // a multiple of `progress_mask + 1` (it may step over one: see `step`).
            if num_operations & self.progress_mask >= step {
                return Ok(());
            }
            return progress(num_operations)
                .map(|token| Err(ERR::ErrorTerminated(token, pos).into()))
                .unwrap_or(Ok(()));
        }

        Ok(())
    }
}
