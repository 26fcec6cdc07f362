//! Printable differences between a desired and an observed ordered rule list.
//!
//! Invariant: pure; returns nothing exactly when the two lists are equal, so
//! "no reason" and "no change" can never disagree.

use std::fmt::Display;

/// What differs between `desired` and `observed` (both in chain order),
/// each item printable: missing, extra, duplicate, edited, reordered.
pub fn rule_differences<T: PartialEq + Display>(desired: &[T], observed: &[T]) -> Vec<String> {
    if desired == observed {
        return Vec::new();
    }
    let count = |list: &[T], item: &T| list.iter().filter(|x| *x == item).count();
    let mut out = Vec::new();

    // Same length and a position where an unknown rule replaced a desired
    // one: somebody edited that rule in place.
    let mut edited = Vec::new();
    if desired.len() == observed.len() {
        for (i, (d, o)) in desired.iter().zip(observed).enumerate() {
            if d != o && !desired.contains(o) && !observed.contains(d) {
                out.push(format!("rule {} edited: `{o}`, want `{d}`", i + 1));
                edited.push(i);
            }
        }
    }
    for (i, d) in desired.iter().enumerate() {
        if !edited.contains(&i) && !observed.contains(d) {
            out.push(format!("missing rule `{d}`"));
        }
    }
    for (i, o) in observed.iter().enumerate() {
        if !edited.contains(&i) && !desired.contains(o) {
            out.push(format!("extra rule `{o}`"));
        }
    }
    for (i, d) in desired.iter().enumerate() {
        let (want, have) = (count(desired, d), count(observed, d));
        let first = desired.iter().position(|x| x == d) == Some(i);
        if first && have > want {
            out.push(format!("duplicate rule `{d}` ({have} copies)"));
        }
    }
    // Order among the desired rules that are present (first occurrences).
    let mut seen: Vec<&T> = Vec::new();
    for o in observed {
        if desired.contains(o) && !seen.contains(&o) {
            seen.push(o);
        }
    }
    let expected: Vec<&T> = desired.iter().filter(|d| observed.contains(d)).collect();
    if seen != expected {
        out.push("rules reordered".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(desired: &[&str], observed: &[&str]) -> Vec<String> {
        rule_differences(desired, observed)
    }

    #[test]
    fn each_kind_of_drift_is_named() {
        let want = ["a", "b", "c"];
        assert!(d(&want, &want).is_empty());
        assert_eq!(d(&want, &["a", "c"]), ["missing rule `b`"]);
        assert_eq!(d(&want, &["a", "b", "c", "x"]), ["extra rule `x`"]);
        assert_eq!(
            d(&want, &["a", "b", "b", "c"]),
            ["duplicate rule `b` (2 copies)"]
        );
        assert_eq!(d(&want, &["b", "a", "c"]), ["rules reordered"]);
        assert_eq!(d(&want, &["a", "x", "c"]), ["rule 2 edited: `x`, want `b`"]);
        assert_eq!(
            d(&want, &[]),
            ["missing rule `a`", "missing rule `b`", "missing rule `c`"]
        );
        assert_eq!(
            d(&want, &["c", "x", "a", "a"]),
            [
                "missing rule `b`",
                "extra rule `x`",
                "duplicate rule `a` (2 copies)",
                "rules reordered"
            ]
        );
    }
}
