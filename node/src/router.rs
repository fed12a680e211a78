//! The route table of one stage: a trie over path segments with AWS's precedence.
//!
//! At every segment a literal beats a `{param}`, which beats a greedy `{proxy+}`; at a matched
//! path an explicit method beats `ANY`; `$default` catches whatever nothing else matched. The
//! search backtracks, so `/a/b` still reaches `GET /{x}/b` when `GET /a/{y}` exists only for POST.

use http::Method;
use portico_proto::{PathSegment, RouteKey, RouteMethod};
use rustc_hash::FxHashMap;

/// Index of a route in the stage's route list.
pub type RouteIndex = usize;

#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    default_route: Option<RouteIndex>,
}

#[derive(Debug, Default)]
struct Node {
    literals: FxHashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes ending in a greedy parameter at this depth.
    greedy: Methods,
    /// Routes ending exactly here.
    here: Methods,
}

#[derive(Debug, Default)]
struct Methods {
    explicit: Vec<(Method, RouteIndex)>,
    any: Option<RouteIndex>,
}

impl Methods {
    fn get(&self, method: &Method) -> Option<RouteIndex> {
        self.explicit
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| *r)
            .or(self.any)
    }

    fn insert(&mut self, method: &RouteMethod, route: RouteIndex) {
        match method {
            RouteMethod::Any => self.any = Some(route),
            RouteMethod::Method(m) => {
                // Validation guarantees an upper-case token, which `Method` always accepts.
                if let Ok(m) = Method::from_bytes(m.as_bytes()) {
                    self.explicit.push((m, route));
                }
            }
        }
    }

    fn collect(&self, out: &mut Vec<String>) {
        for (m, _) in &self.explicit {
            out.push(m.to_string());
        }
        if self.any.is_some() {
            out.push("ANY".to_string());
        }
    }
}

/// A matched route and the raw (still percent-encoded) values of its path parameters, in the
/// order the route key names them.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'p> {
    pub route: RouteIndex,
    pub params: Vec<&'p str>,
}

impl Router {
    pub fn insert(&mut self, key: &RouteKey, route: RouteIndex) {
        let (method, segments) = match key {
            RouteKey::Default => {
                self.default_route = Some(route);
                return;
            }
            RouteKey::Route { method, segments } => (method, segments),
        };
        let mut node = &mut self.root;
        for segment in segments {
            match segment {
                PathSegment::Literal(l) => {
                    node = node.literals.entry(l.as_str().into()).or_default();
                }
                PathSegment::Param(_) => {
                    node = node.param.get_or_insert_with(Default::default);
                }
                PathSegment::Greedy(_) => {
                    node.greedy.insert(method, route);
                    return;
                }
            }
        }
        node.here.insert(method, route);
    }

    /// `path` is the request path below the stage, e.g. `/pets/7`.
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> Option<RouteMatch<'p>> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut params = Vec::new();
        if let Some(route) = find(&self.root, rest, method, &mut params) {
            return Some(RouteMatch { route, params });
        }
        self.default_route.map(|route| RouteMatch {
            route,
            params: Vec::new(),
        })
    }

    /// The methods of every route whose path matches, for a helpful "no route" error.
    pub fn methods_for_path(&self, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        collect_methods(&self.root, path.strip_prefix('/').unwrap_or(path), &mut out);
        out.sort();
        out.dedup();
        out
    }
}

/// Splits off the first segment; `None` at the end of the path (a trailing `/` ends it too).
fn next_segment(rest: &str) -> Option<(&str, &str)> {
    if rest.is_empty() {
        return None;
    }
    // A byte scan: path segments are short, and `str::find` set up a searcher for each.
    Some(match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    })
}

fn find<'p>(
    node: &Node,
    rest: &'p str,
    method: &Method,
    params: &mut Vec<&'p str>,
) -> Option<RouteIndex> {
    let Some((segment, after)) = next_segment(rest) else {
        return node.here.get(method);
    };
    if let Some(child) = node.literals.get(segment) {
        let mark = params.len();
        if let Some(r) = find(child, after, method, params) {
            return Some(r);
        }
        params.truncate(mark);
    }
    if let Some(child) = &node.param
        && !segment.is_empty()
    {
        params.push(segment);
        if let Some(r) = find(child, after, method, params) {
            return Some(r);
        }
        params.pop();
    }
    if !segment.is_empty()
        && let Some(r) = node.greedy.get(method)
    {
        params.push(rest.trim_end_matches('/'));
        return Some(r);
    }
    None
}

fn collect_methods(node: &Node, rest: &str, out: &mut Vec<String>) {
    let Some((segment, after)) = next_segment(rest) else {
        node.here.collect(out);
        return;
    };
    if let Some(child) = node.literals.get(segment) {
        collect_methods(child, after, out);
    }
    if let Some(child) = &node.param
        && !segment.is_empty()
    {
        collect_methods(child, after, out);
    }
    if !segment.is_empty() {
        node.greedy.collect(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(keys: &[&str]) -> Router {
        let mut r = Router::default();
        for (i, k) in keys.iter().enumerate() {
            r.insert(&RouteKey::parse(k).unwrap(), i);
        }
        r
    }

    fn hit<'p>(r: &Router, m: &str, p: &'p str) -> Option<(usize, Vec<&'p str>)> {
        r.find(&Method::from_bytes(m.as_bytes()).unwrap(), p)
            .map(|m| (m.route, m.params))
    }

    #[test]
    fn precedence_is_exact_then_param_then_greedy_then_default() {
        let r = router(&[
            "GET /pets/dog",
            "GET /pets/{id}",
            "GET /pets/{proxy+}",
            "$default",
            "ANY /pets/cat",
            "POST /pets/{id}",
        ]);
        assert_eq!(hit(&r, "GET", "/pets/dog"), Some((0, vec![])));
        assert_eq!(hit(&r, "GET", "/pets/7"), Some((1, vec!["7"])));
        assert_eq!(
            hit(&r, "GET", "/pets/7/toys/1"),
            Some((2, vec!["7/toys/1"]))
        );
        assert_eq!(hit(&r, "GET", "/cars"), Some((3, vec![])));
        // an exact path with ANY beats a parameter with the explicit method
        assert_eq!(hit(&r, "GET", "/pets/cat"), Some((4, vec![])));
        assert_eq!(hit(&r, "POST", "/pets/7"), Some((5, vec!["7"])));
        // a method with no route falls through to the greedy route, then $default
        assert_eq!(hit(&r, "DELETE", "/pets/7"), Some((3, vec![])));
    }

    #[test]
    fn backtracks_across_branches() {
        let r = router(&["POST /a/{y}", "GET /{x}/b"]);
        assert_eq!(hit(&r, "GET", "/a/b"), Some((1, vec!["a"])));
        assert_eq!(hit(&r, "GET", "/a/c"), None);
        assert_eq!(r.methods_for_path("/a/c"), vec!["POST"]);
    }

    #[test]
    fn root_trailing_slash_and_empty_segments() {
        let r = router(&["GET /", "GET /x", "GET /{p}/z"]);
        assert_eq!(hit(&r, "GET", "/"), Some((0, vec![])));
        assert_eq!(hit(&r, "GET", ""), Some((0, vec![])));
        assert_eq!(hit(&r, "GET", "/x/"), Some((1, vec![])));
        assert_eq!(hit(&r, "GET", "//z"), None);
        let g = router(&["ANY /{proxy+}"]);
        assert_eq!(
            hit(&g, "PUT", "/"),
            None,
            "a greedy parameter needs one segment"
        );
        assert_eq!(hit(&g, "PUT", "/a/b/"), Some((0, vec!["a/b"])));
    }
}
