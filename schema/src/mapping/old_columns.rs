//! Which columns of `.old` (or of `.new`) a program reads, found by walking jaq's AST.
//!
//! The scan may over-approximate (name a column the program does not need, or
//! answer `All`) but never under-approximate: whenever the event root can
//! flow somewhere the scan cannot follow (bare `.`, `..`, `.[]`, a dynamic
//! key, a call that receives the event, `. as $e`), the answer is `All`.

use std::collections::BTreeSet;

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::load::{self};
use jaq_core::path::{Part, Path};

use super::OldColumns;

/// Calls whose output and effect do not expose column values of their
/// input, so calling them on the event reads no `.old` column.
const INPUT_SAFE_CALLS: &[&str] = &[
    "empty", "null", "true", "false", "not", "now", "has", "length", "type", "range", "nan",
    "infinite",
];

/// Scans `source` for the columns it reads of the event's row `field` (`old`
/// or `new`); `All` when it does not parse as a plain term.
pub(crate) fn scan(source: &str, field: &'static str) -> OldColumns {
    let Some(term) = load::parse(source, |p| p.term()) else {
        return OldColumns::All;
    };
    let mut scan = Scan {
        field,
        columns: BTreeSet::new(),
        all: false,
    };
    scan.term(&term, true);
    if scan.all {
        OldColumns::All
    } else if scan.columns.is_empty() {
        OldColumns::None
    } else {
        OldColumns::Some(scan.columns.into_iter().collect())
    }
}

struct Scan {
    /// The top-level field whose columns are collected.
    field: &'static str,
    columns: BTreeSet<String>,
    all: bool,
}

impl Scan {
    /// Visits `t`; `root` says whether `.` may be the event itself there.
    fn term(&mut self, t: &Term<&str>, root: bool) {
        match t {
            Term::Id | Term::Recurse => self.all |= root,
            Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
            Term::Str(fmt, parts) => {
                let has_terms = parts.iter().any(|p| matches!(p, StrPart::Term(_)));
                // A bare `@json`/`@base64` formats its input.
                self.all |= root && fmt.is_some() && !has_terms;
                for part in parts {
                    if let StrPart::Term(t) = part {
                        self.term(t, root);
                    }
                }
            }
            Term::Arr(t) => {
                if let Some(t) = t {
                    self.term(t, root);
                }
            }
            Term::Obj(entries) => {
                for (k, v) in entries {
                    match v {
                        Some(v) => {
                            self.term(k, root);
                            self.term(v, root);
                        }
                        // `{new}` is `{new: .new}`, `{$x}` is `{x: $x}`.
                        None => match (k, const_str(k)) {
                            (Term::Var(_), _) => {}
                            (_, Some(name)) => {
                                if root {
                                    self.top_field(&name, None);
                                }
                            }
                            (_, None) => {
                                self.all |= root;
                                self.term(k, root);
                            }
                        },
                    }
                }
            }
            Term::Neg(t) | Term::Label(_, t) => self.term(t, root),
            Term::BinOp(l, op, r) => match op {
                BinaryOp::Pipe(None) => {
                    let right_root = self.pipe_left(l, root);
                    self.term(r, right_root);
                }
                BinaryOp::Pipe(Some(pattern)) => {
                    // `l as $x | r`: r still sees the original input.
                    self.term(l, root);
                    self.pattern(pattern, root);
                    self.term(r, root);
                }
                BinaryOp::Assign
                | BinaryOp::Update
                | BinaryOp::UpdateMath(_)
                | BinaryOp::UpdateAlt => {
                    // The result is the whole (modified) input.
                    self.all |= root;
                    self.term(l, root);
                    self.term(r, root);
                }
                _ => {
                    self.term(l, root);
                    self.term(r, root);
                }
            },
            Term::Fold(_, xs, pattern, args) => {
                self.term(xs, root);
                self.pattern(pattern, root);
                for a in args {
                    self.term(a, root);
                }
            }
            Term::TryCatch(t, catch) => {
                self.term(t, root);
                if let Some(c) = catch {
                    self.term(c, root);
                }
            }
            Term::IfThenElse(branches, otherwise) => {
                for (cond, then) in branches {
                    self.term(cond, root);
                    self.term(then, root);
                }
                if let Some(e) = otherwise {
                    self.term(e, root);
                }
            }
            Term::Def(defs, body) => {
                // A local definition may be called on the event.
                for d in defs {
                    self.term(&d.body, true);
                }
                self.term(body, root);
            }
            Term::Call(name, args) => {
                let safe =
                    INPUT_SAFE_CALLS.contains(name) || (*name == "error" && !args.is_empty());
                self.all |= root && !safe;
                for a in args {
                    self.term(a, root);
                }
            }
            Term::Path(head, path) => self.path(head, path, root),
        }
    }

    /// Visits the left side of `l | r`; returns whether `r` may see the event.
    fn pipe_left(&mut self, l: &Term<&str>, root: bool) -> bool {
        if !root {
            self.term(l, false);
            return false;
        }
        match l {
            Term::Id => true,
            Term::Call("select", args) if args.len() == 1 => {
                for a in args {
                    self.term(a, true);
                }
                true
            }
            _ => {
                self.term(l, true);
                false
            }
        }
    }

    fn path(&mut self, head: &Term<&str>, path: &Path<Term<&str>>, root: bool) {
        let parts = &path.0;
        if matches!(head, Term::Id) && root {
            match parts.first() {
                Some((Part::Index(k), _)) => match const_str(k) {
                    Some(name) => self.top_field(&name, parts.get(1).map(|(p, _)| p)),
                    None => self.all = true,
                },
                _ => self.all = true,
            }
        } else {
            self.term(head, root);
        }
        // jq evaluates index expressions (`.a[.b]`) against the path's input.
        for (part, _) in parts {
            match part {
                Part::Index(t) => self.term(t, root),
                Part::Range(from, to) => {
                    for t in [from, to].into_iter().flatten() {
                        self.term(t, root);
                    }
                }
            }
        }
    }

    /// Records `.name` on the event, followed by `next` (if any).
    fn top_field(&mut self, name: &str, next: Option<&Part<Term<&str>>>) {
        if name != self.field {
            return;
        }
        match next.and_then(|p| match p {
            Part::Index(k) => const_str(k),
            Part::Range(..) => None,
        }) {
            Some(column) => {
                self.columns.insert(column);
            }
            None => self.all = true,
        }
    }

    fn pattern(&mut self, pattern: &Pattern<&str>, root: bool) {
        match pattern {
            Pattern::Var(_) => {}
            Pattern::Arr(ps) => ps.iter().for_each(|p| self.pattern(p, root)),
            Pattern::Obj(entries) => {
                for (k, p) in entries {
                    self.term(k, root);
                    self.pattern(p, root);
                }
            }
        }
    }
}

/// The value of a constant string term (`"a"`, `a` in `.a`), else None.
fn const_str(t: &Term<&str>) -> Option<String> {
    let Term::Str(None, parts) = t else {
        return None;
    };
    let mut out = String::new();
    for part in parts {
        match part {
            StrPart::Str(s) => out.push_str(s),
            StrPart::Char(c) => out.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(out)
}
