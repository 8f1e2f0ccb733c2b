//! System caches.

use crate::func::{RhaiFunc, StraightHashMap};
use crate::types::BloomFilterU64;
use crate::{ImmutableString, StaticVec};
#[cfg(feature = "no_std")]
use std::prelude::v1::*;

/// _(internals)_ An entry in a function resolution cache.
/// Exported under the `internals` feature only.
#[derive(Debug, Clone)]
pub struct FnResolutionCacheEntry {
    /// Function.
    pub func: RhaiFunc,
    /// Optional source.
    pub source: Option<ImmutableString>,
}

/// _(internals)_ A function resolution cache with a bloom filter.
/// Exported under the `internals` feature only.
///
/// The [bloom filter][`BloomFilterU64`] is used to rapidly check whether a function hash has never been encountered.
/// It enables caching a hash only during the second encounter to avoid "one-hit wonders".
#[derive(Debug, Clone, Default)]
pub struct FnResolutionCache {
    /// Hash map containing cached functions.
    pub dict: StraightHashMap<Option<FnResolutionCacheEntry>>,
    /// Bloom filter to avoid caching "one-hit wonders".
    ///
    /// Default to 64 bytes (512 bits) which hopefully is enough for different function calls in a script.
    pub bloom_filter: BloomFilterU64<64>,
}

impl FnResolutionCache {
    /// Clear the [`FnResolutionCache`].
    #[inline(always)]
    #[allow(dead_code)]
    pub fn clear(&mut self) {
        self.dict.clear();
        self.bloom_filter.clear();
    }
}

/// _(internals)_ A type containing system-wide caches.
/// Exported under the `internals` feature only.
///
/// The following caches are contained inside this type:
/// * A stack of [function resolution caches][FnResolutionCache]
#[derive(Debug, Clone, Default)]
pub struct Caches {
    fn_resolution: StaticVec<FnResolutionCache>,
    /// proxy-rhai patch 6 (speed): set in a [`FnCallCache`]'s, whose resolutions outlive the call;
    /// only then do call sites remember theirs ([`CallSite`]).
    persistent: bool,
}

/// proxy-rhai patch 5 (speed): the function resolutions of calls into one [`AST`][crate::AST],
/// kept from one call to the next by [`Engine::call_phase_fn`][crate::Engine::call_phase_fn].
///
/// The resolutions, and those its calls leave in the [`AST`]'s call sites ([`CallSite`]), stay
/// right as long as the engine's functions and the [`AST`]'s stay as they are: use one per
/// [`AST`], with one engine, and register nothing after the first call.
///
/// proxy-rhai patch 19 (speed): it keeps the runtime state the calls run on too, made once and
/// made new again for each call ([`FnCallCache::for_ast_call`]).
#[derive(Debug, Clone)]
pub struct FnCallCache {
    caches: Caches,
    global: Option<crate::eval::GlobalRuntimeState>,
}

impl Default for FnCallCache {
    fn default() -> Self {
        Self {
            caches: Caches {
                persistent: true,
                ..Caches::new()
            },
            global: None,
        }
    }
}

impl FnCallCache {
    /// How many resolutions it holds, found or not: a call by a name made at run time
    /// (`is_def_fn(name, 0)`) adds one per name, so a caller bounds it.
    #[must_use]
    pub fn len(&self) -> usize {
        self.caches.fn_resolution.iter().map(|c| c.dict.len()).sum()
    }
    /// Whether it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every resolution (call sites keep theirs: there are as many as the AST has).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
    /// proxy-rhai patch 19 (speed): the runtime state and the caches for a call into `ast` on
    /// `engine`. The state is the last call's, made again as a call's own would be made: as new
    /// ([`Engine::renew_global_runtime_state`]), with `ast`'s functions and source (kept from the
    /// last call when they are the same).
    pub(crate) fn for_ast_call(
        &mut self,
        engine: &crate::Engine,
        ast: &crate::AST,
    ) -> (&mut crate::eval::GlobalRuntimeState, &mut Caches) {
        let (global, caches) = self.renewed_with_lib(engine, ast);
        if global.source.as_ref() != ast.source_raw() {
            global.source = ast.source_raw().cloned();
        }
        #[cfg(not(feature = "no_module"))]
        {
            global.embedded_module_resolver = ast.resolver.clone();
        }
        (global, caches)
    }
    /// proxy-rhai patch 19 (speed): the runtime state and the caches for a call of a function
    /// pointer into `ast` on `engine` ([`FnPtr::call_with_cache`][crate::FnPtr::call_with_cache]):
    /// the state [`FnPtr::call`][crate::FnPtr::call] makes, new with `ast`'s functions, without
    /// its source, renewed in place as for [`for_ast_call`][Self::for_ast_call].
    #[cfg(not(feature = "no_function"))]
    pub(crate) fn for_fn_ptr_call(
        &mut self,
        engine: &crate::Engine,
        ast: &crate::AST,
    ) -> (&mut crate::eval::GlobalRuntimeState, &mut Caches) {
        let (global, caches) = self.renewed_with_lib(engine, ast);
        if global.source.is_some() {
            global.source = None;
        }
        (global, caches)
    }
    /// The last call's runtime state made new ([`Engine::renew_global_runtime_state`], which
    /// keeps the source), with `ast`'s functions, and the caches. (Inlined: a call of its own
    /// cost each phase call ~16 more wasm instructions.)
    #[inline(always)]
    fn renewed_with_lib(
        &mut self,
        engine: &crate::Engine,
        _ast: &crate::AST,
    ) -> (&mut crate::eval::GlobalRuntimeState, &mut Caches) {
        let global = match self.global {
            Some(ref mut global) => {
                engine.renew_global_runtime_state(global);
                global
            }
            None => self.global.insert(engine.new_global_runtime_state()),
        };
        #[cfg(not(feature = "no_function"))]
        if !matches!(&*global.lib, [lib] if crate::Shared::ptr_eq(lib, _ast.shared_lib())) {
            global.lib.clear();
            global.lib.push(_ast.shared_lib().clone());
        }
        (global, with_level(&mut self.caches))
    }
}

/// `caches` for a call, with a level of their own: the called function's body pushes the first
/// level and pops it when it returns, which would empty a cache that had none.
fn with_level(caches: &mut Caches) -> &mut Caches {
    if caches.fn_resolution_caches_len() == 0 {
        caches.push_fn_resolution_cache();
    }
    caches
}

/// _(internals)_ proxy-rhai patch 6 (speed): the native function a call site (a function or method
/// call in an [`AST`][crate::AST]) resolved to, with the types of the arguments it was called
/// with. A call with the same types calls it again without resolving: no hash, no search, and
/// none of the checks a resolution starts with (the call site already passed them). Filled and
/// read only under a persistent cache ([`FnCallCache`]), whose contract keeps it right. A clone
/// of the AST starts empty.
/// Exported under the `internals` feature only.
#[derive(Default)]
pub struct CallSite(
    #[cfg(not(feature = "sync"))] std::cell::RefCell<Option<std::rc::Rc<CallSiteEntry>>>,
);

/// _(internals)_ What a [`CallSite`] remembers.
/// Exported under the `internals` feature only.
pub struct CallSiteEntry {
    /// The types of the arguments, in order.
    types: crate::FnArgsVec<std::any::TypeId>,
    /// The native function.
    pub func: RhaiFunc,
    /// Its source.
    pub source: Option<ImmutableString>,
}

impl CallSite {
    /// The function this site resolved to, if `args` have the types it was resolved for.
    /// Ask only under a persistent cache ([`Caches::is_persistent`]).
    #[inline]
    #[must_use]
    pub(crate) fn get(&self, args: &crate::func::FnCallArgs) -> Option<std::rc::Rc<CallSiteEntry>> {
        #[cfg(not(feature = "sync"))]
        {
            let entry = self.0.borrow();
            let entry = entry.as_ref()?;
            let same = entry.types.len() == args.len()
                && entry.types.iter().zip(args.iter()).all(|(t, a)| *t == a.type_id());
            same.then(|| entry.clone())
        }
        #[cfg(feature = "sync")]
        {
            let _ = args;
            None
        }
    }
    /// Remembers what a call with `args` resolved to (only under a persistent cache).
    #[inline]
    pub(crate) fn set(
        &self,
        args: &crate::func::FnCallArgs,
        func: &RhaiFunc,
        source: Option<&ImmutableString>,
    ) {
        #[cfg(not(feature = "sync"))]
        {
            *self.0.borrow_mut() = Some(std::rc::Rc::new(CallSiteEntry {
                types: args.iter().map(|a| a.type_id()).collect(),
                func: func.clone(),
                source: source.cloned(),
            }));
        }
        #[cfg(feature = "sync")]
        let _ = (args, func, source);
    }
}

impl Clone for CallSite {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::hash::Hash for CallSite {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for CallSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallSite")
    }
}

impl Caches {
    /// Create an empty [`Caches`].
    #[inline(always)]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            fn_resolution: StaticVec::new_const(),
            persistent: false,
        }
    }
    /// proxy-rhai patch 6 (speed): whether the resolutions outlive the call ([`FnCallCache`]), so
    /// that call sites may remember theirs ([`CallSite`]).
    #[inline(always)]
    #[must_use]
    pub(crate) const fn is_persistent(&self) -> bool {
        self.persistent
    }
    /// Get the number of function resolution cache(s) in the stack.
    #[inline(always)]
    #[must_use]
    pub fn fn_resolution_caches_len(&self) -> usize {
        self.fn_resolution.len()
    }
    /// Get a mutable reference to the current function resolution cache.
    ///
    /// A new function resolution cache is pushed onto the stack if the stack is empty.
    #[inline]
    #[must_use]
    pub fn fn_resolution_cache_mut(&mut self) -> &mut FnResolutionCache {
        // Push a new function resolution cache if the stack is empty
        if self.fn_resolution.is_empty() {
            self.push_fn_resolution_cache();
        }
        self.fn_resolution.last_mut().unwrap()
    }
    /// Push an empty function resolution cache onto the stack and make it current.
    #[inline(always)]
    pub fn push_fn_resolution_cache(&mut self) {
        self.fn_resolution.push(<_>::default());
    }
    /// Rewind the function resolution caches stack to a particular size.
    #[inline(always)]
    pub fn rewind_fn_resolution_caches(&mut self, len: usize) {
        self.fn_resolution.truncate(len);
    }
}
