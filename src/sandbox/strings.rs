//! Rhai's string functions that could make a value far past the limits, or never end, replaced
//! with versions that can't (the same names, parameter types, results and errors); and
//! `contains`, replaced with a faster search.
//!
//! Rhai makes a function's result, then checks its size. A short `find` and a long substitute
//! multiply a string: `s.replace("x", t)` with a 1 MB `s` and a 1,000-character `t` asks for
//! 1 GB, and in Envoy 1.40 the failed allocation trapped the VM (503 from then on). A split
//! makes a value per piece (~60 bytes in wasm): `s.split("")` of an 8 MB string grew Envoy by
//! 383 MB for good before the size check refused the 8 million items. A change of case can
//! triple a string (`ΐ` to `Ϊ́`: 2 bytes to 6): at the highest limits, `to_upper` of a 160 MB
//! string trapped the VM. And `s.pad(10, "")` added `""` until the string was long enough: an
//! endless loop inside a native function, where no limit reaches.
//!
//! These work out what they would make first and refuse it with Rhai's own errors ("Length of
//! string too large", "Size of array/BLOB too large"): the `split("")` above ends in 44–55 ms,
//! and Envoy grows by the string alone. `pad` with an empty padding leaves the string as it
//! is, and `pad` makes its copies at once (`loop { let t = "x"; t.pad(4000000, 'x'); }` in
//! Envoy: > 40 s, now 18.5 ms to "Too many operations", as Rhai patch 11 charges what `pad`
//! writes).
//!
//! They are in a global module registered after Rhai's packages, so a call finds them before
//! Rhai's functions of the same signatures. (Not in the global namespace with the bindings:
//! 20 more functions there changed the cost of finding the bindings by −1,500 to +470 wasm
//! instructions a request in the bench workloads.) They are Rhai's functions, documented with
//! its standard library (`api-docs/definitions/rhai-std.d.rhai`), not in the API reference:
//! the engine that reference is made from (`docs.rs`) doesn't have them.
//!
//! Tests: `tests/string_limits.rs` (what each call allocates), `padding_with_an_empty_string_ends`
//! and `changing_case_keeps_to_the_string_size_limit` (`tests/errors_and_limits.rs`),
//! `one_call_cannot_make_a_value_far_past_the_limits` and
//! `texts_stop_at_the_string_size_limit_even_at_the_highest_limits` (`tests/e2e/faults.rs`).

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FuncRegistration, ImmutableString, Module,
    NativeCallContext, Position, INT,
};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

/// Registers the replacements on `engine` (by [`super::std_engine`]).
pub(crate) fn register(engine: &mut Engine) {
    let mut module = Module::new();
    register_into(&mut module);
    engine.register_global_module(module.into());
}

fn register_into(module: &mut Module) {
    // A function that changes its first argument is not pure, as Rhai's are: it can't be called
    // on a constant, and what it leaves in the argument is measured and charged after the call.
    let changing = |name: &'static str| pure(name).with_purity(false);

    pure("to_upper").set_into_module(module, |ctx: NativeCallContext, s: ImmutableString| {
        to_case(&ctx, s, true)
    });
    pure("to_lower").set_into_module(module, |ctx: NativeCallContext, s: ImmutableString| {
        to_case(&ctx, s, false)
    });
    changing("make_upper")
        .set_into_module(module, |ctx: NativeCallContext, s: &mut ImmutableString| {
            make_case(&ctx, s, true)
        });
    changing("make_lower")
        .set_into_module(module, |ctx: NativeCallContext, s: &mut ImmutableString| {
            make_case(&ctx, s, false)
        });

    changing("replace").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, with: &str| {
            replace(&ctx, s, find, with)
        },
    );
    changing("replace").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, with: char| {
            replace(&ctx, s, find, with.encode_utf8(&mut [0; 4]))
        },
    );
    changing("replace").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, with: &str| {
            replace(&ctx, s, find.encode_utf8(&mut [0; 4]), with)
        },
    );
    changing("replace").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, with: char| {
            replace(
                &ctx,
                s,
                find.encode_utf8(&mut [0; 4]),
                with.encode_utf8(&mut [0; 4]),
            )
        },
    );

    changing("pad").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, len: INT, with: char| {
            pad(&ctx, s, len, with.encode_utf8(&mut [0; 4]))
        },
    );
    changing("pad").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString, len: INT, with: &str| {
            pad(&ctx, s, len, with)
        },
    );

    // For speed: std's search is Two-Way, byte by byte; memchr's is vector code under wasm's
    // `simd128` (1 MB searched for a 17-byte marker: 6.6 M wasm instructions before, 1.6 M).
    pure("contains").set_into_module(module, |s: &str, find: &str| {
        memchr::memmem::find(s.as_bytes(), find.as_bytes()).is_some()
    });
    pure("contains").set_into_module(module, |s: &str, find: char| {
        let mut bytes = [0; 4];
        let find = find.encode_utf8(&mut bytes);
        memchr::memmem::find(s.as_bytes(), find.as_bytes()).is_some()
    });

    register_splits(module);
}

/// A function that leaves its arguments as they are (`pure`, Rhai's default).
fn pure(name: &'static str) -> FuncRegistration {
    FuncRegistration::new(name).in_global_namespace()
}

/// `to_chars`, `split` and `split_rev`: Rhai's results, pieces counted first when there could be
/// too many. Each takes its string as Rhai's do (`&mut`, pure: no copy, nothing to re-measure).
fn register_splits(module: &mut Module) {
    pure("to_chars").set_into_module(module, |ctx: NativeCallContext, s: &str| {
        pieces(&ctx, s, s.chars())
    });
    pure("split").set_into_module(
        module,
        |ctx: NativeCallContext, s: &mut ImmutableString| match s.is_empty() {
            true => Ok(vec![s.clone().into()]),
            false => pieces(&ctx, s, s.split_whitespace()),
        },
    );
    for (name, rev) in [("split", false), ("split_rev", true)] {
        pure(name).set_into_module(
            module,
            move |ctx: NativeCallContext, s: &mut ImmutableString, by: &str| {
                split(&ctx, s, by, None, rev)
            },
        );
        pure(name).set_into_module(
            module,
            move |ctx: NativeCallContext, s: &mut ImmutableString, by: &str, n: INT| {
                split(&ctx, s, by, Some(n), rev)
            },
        );
        // A character splits where its UTF-8 bytes are, as Rhai's split by a character does.
        pure(name).set_into_module(
            module,
            move |ctx: NativeCallContext, s: &mut ImmutableString, by: char| {
                split(&ctx, s, by.encode_utf8(&mut [0; 4]), None, rev)
            },
        );
        pure(name).set_into_module(
            module,
            move |ctx: NativeCallContext, s: &mut ImmutableString, by: char, n: INT| {
                split(&ctx, s, by.encode_utf8(&mut [0; 4]), Some(n), rev)
            },
        );
    }
}

/// `split` / `split_rev` by `by`, into at most `n` pieces when given. As Rhai's: the string
/// whole when it is empty, has no `by` in it (an empty `by` is in every string) or `n` ≤ 1.
fn split(
    ctx: &NativeCallContext,
    s: &ImmutableString,
    by: &str,
    n: Option<INT>,
    rev: bool,
) -> Result<Array> {
    if s.is_empty() || (!by.is_empty() && !s.contains(by)) || n.is_some_and(|n| n <= 1) {
        return Ok(vec![s.clone().into()]);
    }
    match (n.map(segments), rev) {
        (None, false) => pieces(ctx, s, s.split(by)),
        (None, true) => pieces(ctx, s, s.rsplit(by)),
        (Some(n), false) => pieces(ctx, s, s.splitn(n, by)),
        (Some(n), true) => pieces(ctx, s, s.rsplitn(n, by)),
    }
}

/// A segment count as Rhai's `splitn` takes it (past `usize`: no limit).
fn segments(n: INT) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Rhai's error for a string past `max_string_size`.
fn string_too_large() -> Box<EvalAltResult> {
    EvalAltResult::ErrorDataTooLarge("Length of string".into(), Position::NONE).into()
}

/// An error if a string of `len` bytes would be past the string size limit.
fn check_string_len(ctx: &NativeCallContext, len: usize) -> Result<()> {
    let max = ctx.engine().max_string_size();
    match max > 0 && len > max {
        true => Err(string_too_large()),
        false => Ok(()),
    }
}

/// The pieces of a split of `s`, as an array. When `s` is long enough to make more pieces than
/// the array size limit allows (`split("")` makes the most: one per character, and an empty one
/// at each end), they are counted first, and too many are refused before any is made.
fn pieces<T: Into<Dynamic>>(
    ctx: &NativeCallContext,
    s: &str,
    pieces: impl Iterator<Item = T> + Clone,
) -> Result<Array> {
    let max = ctx.engine().max_array_size();
    if max > 0 && s.len().saturating_add(2) > max && pieces.clone().count() > max {
        return Err(
            EvalAltResult::ErrorDataTooLarge("Size of array/BLOB".into(), Position::NONE).into(),
        );
    }
    Ok(pieces.map(Into::into).collect())
}

/// A change of case whose result would be past the string size limit is refused before it is
/// made. Only a string longer than a third of the limit is measured (char by char: `Σ`'s two
/// lowercase forms are the same length): a shorter one can't make a longer text.
fn check_case_change(ctx: &NativeCallContext, s: &str, upper: bool) -> Result<()> {
    let max = ctx.engine().max_string_size();
    if max == 0 || s.len() <= max / 3 {
        return Ok(());
    }
    let len: usize = match upper {
        true => s
            .chars()
            .flat_map(char::to_uppercase)
            .map(char::len_utf8)
            .sum(),
        false => s
            .chars()
            .flat_map(char::to_lowercase)
            .map(char::len_utf8)
            .sum(),
    };
    check_string_len(ctx, len)
}

/// Whether `s` is in the case already (Rhai's shortcut: then the string itself is returned).
fn in_case(s: &str, upper: bool) -> bool {
    match upper {
        true => s.chars().all(char::is_uppercase),
        false => s.is_empty() || s.chars().all(char::is_lowercase),
    }
}

fn changed_case(s: &str, upper: bool) -> ImmutableString {
    match upper {
        true => s.to_uppercase().into(),
        false => s.to_lowercase().into(),
    }
}

/// `to_upper` / `to_lower`.
fn to_case(ctx: &NativeCallContext, s: ImmutableString, upper: bool) -> Result<ImmutableString> {
    if in_case(&s, upper) {
        return Ok(s);
    }
    check_case_change(ctx, &s, upper)?;
    Ok(changed_case(&s, upper))
}

/// `make_upper` / `make_lower`.
fn make_case(ctx: &NativeCallContext, s: &mut ImmutableString, upper: bool) -> Result<()> {
    if s.is_empty() || in_case(s, upper) {
        return Ok(());
    }
    check_case_change(ctx, s, upper)?;
    *s = changed_case(s, upper);
    Ok(())
}

/// Every `find` in `s` replaced by `with`: the length of the result is worked out first (the
/// matches are counted when `with` is longer), and one past the string size limit is refused.
fn replace(ctx: &NativeCallContext, s: &mut ImmutableString, find: &str, with: &str) -> Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    if ctx.engine().max_string_size() > 0 && with.len() > find.len() {
        // An empty `find` matches before each character and at the end.
        let matches = match find.is_empty() {
            true => s.chars().count() + 1,
            false => s.matches(find).count(),
        };
        let growth = matches.saturating_mul(with.len() - find.len());
        check_string_len(ctx, s.len().saturating_add(growth))?;
    }
    *s = s.replace(find, with).into();
    Ok(())
}

/// `s` padded with copies of `with` to `len` characters, as Rhai pads (refusing a `len` past
/// the string size limit, and a result past it after padding), but an empty `with` leaves `s`
/// as it is, and the copies are made at once, not pushed one by one (~33 ns a character in
/// wasm: 4 MB took 134 ms).
fn pad(ctx: &NativeCallContext, s: &mut ImmutableString, len: INT, with: &str) -> Result<()> {
    if len <= 0 {
        return Ok(());
    }
    let len = usize::try_from(len).map_err(|_| string_too_large())?;
    check_string_len(ctx, len)?;
    let have = s.chars().count();
    let unit = with.chars().count();
    if len <= have || unit == 0 {
        return Ok(());
    }
    let missing = len - have;
    let mut out = String::with_capacity(s.len() + with.len().saturating_mul(missing / unit + 1));
    out.push_str(s);
    out.push_str(&with.repeat(missing / unit));
    out.extend(with.chars().take(missing % unit));
    *s = out.into();
    check_string_len(ctx, s.len())
}

#[cfg(all(test, tools))]
mod tests {
    /// Every form of Rhai's functions replaced here that takes a string first (Rhai's own list:
    /// its name and parameter types, which are what a call is resolved by) is called on an
    /// engine that has the replacements and none of Rhai's packages: each call finds one, so
    /// on the plugin's engine, where their module is searched before Rhai's packages, the same
    /// call finds the replacement.
    #[test]
    fn every_form_of_the_replaced_functions_has_a_replacement() {
        let replaced = [
            "to_upper",
            "to_lower",
            "make_upper",
            "make_lower",
            "replace",
            "pad",
            "contains",
        ];
        let replaced = replaced.iter().chain(&["to_chars", "split", "split_rev"]);
        let mut calls = Vec::new();
        for signature in rhai::Engine::new().gen_fn_signatures(true) {
            let Some((name, rest)) = signature.split_once('(') else {
                continue;
            };
            let Some((params, _)) = rest.split_once(')') else {
                continue;
            };
            let types: Vec<&str> = params
                .split(", ")
                .map(|p| {
                    p.rsplit(": ")
                        .next()
                        .unwrap_or(p)
                        .trim_start_matches("&mut ")
                })
                .collect();
            // `split(string, index)` makes two pieces, and stays Rhai's.
            if !replaced.clone().any(|r| *r == name)
                || types.first() != Some(&"string")
                || (name == "split" && types == ["string", "i64"])
            {
                continue;
            }
            let args: Vec<&str> = types[1..]
                .iter()
                .map(|t| match *t {
                    "string" => "\"b\"",
                    "char" => "'b'",
                    "i64" => "2",
                    other => panic!("{signature}: no value of type {other}"),
                })
                .collect();
            calls.push(format!(
                "{{ let s = \"a b\"; s.{name}({}); }}",
                args.join(", ")
            ));
        }
        assert_eq!(calls.len(), 22, "{calls:?}");
        let mut engine = rhai::Engine::new_raw();
        super::register(&mut engine);
        for call in &calls {
            engine.run(call).unwrap_or_else(|e| panic!("{call}: {e}"));
        }
    }

    /// Within the limits, each replacement gives what Rhai's function gives (and leaves in its
    /// string), but `pad` with "", over edge cases: empty strings and delimiters, delimiters at the ends, counts
    /// of pieces from negative to past the pieces, multi-byte characters.
    #[test]
    fn the_replacements_give_rhais_results() {
        let strings = [
            "",
            "a",
            "a,b,,c,",
            ",ΐé,ß,",
            "  two  words ",
            "ΣΑΣ σας",
            "İi",
            "the quick brown fox, ΐé ß, jumps over the lazy dog again, proxy-rhai-marker end",
        ];
        let mut calls = vec!["s.to_chars()".to_string(), "s.split()".to_string()];
        let needles = [
            r#""proxy-rhai-marker""#,
            r#""marker end""#,
            r#""dog, ΐ""#,
            "'ß'",
            "'x'",
        ];
        for find in needles {
            calls.push(format!("s.contains({find})"));
        }
        for f in ["to_upper", "to_lower", "make_upper", "make_lower"] {
            calls.push(format!("s.{f}()"));
        }
        for by in [r#""""#, r#"",""#, "','", r#""é,""#, "'ß'", "' '"] {
            for f in ["split", "split_rev"] {
                calls.push(format!("s.{f}({by})"));
                for n in [-1, 0, 1, 2, 3, 100] {
                    calls.push(format!("s.{f}({by}, {n})"));
                }
            }
            calls.push(format!("s.contains({by})"));
            for with in [r#""""#, r#""<>""#, "'ΐ'"] {
                calls.push(format!("s.replace({by}, {with})"));
            }
            // Rhai's `pad` with "" never ends: the one difference.
            if by != r#""""# {
                for n in [-1, 0, 3, 9] {
                    calls.push(format!("s.pad({n}, {by})"));
                }
            }
        }
        let mut ours = rhai::Engine::new();
        super::register(&mut ours);
        let rhais = rhai::Engine::new();
        for string in strings {
            for call in &calls {
                // The result, and what the call left in `s`.
                let script = format!("let s = {string:?}; let r = {call}; [r, s]");
                let run = |engine: &rhai::Engine| {
                    engine
                        .eval::<rhai::Dynamic>(&script)
                        .map(|v| v.to_string())
                        .map_err(|e| e.to_string())
                };
                assert_eq!(run(&ours), run(&rhais), "{script}");
            }
        }
    }
}
