//! Integration URI templates: `http://${stageVariables.host}/pets/{id}?v=1`.

/// One piece of a URI template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `${stageVariables.NAME}`
    StageVariable(String),
    /// `{NAME}`: a path parameter of the route (`{proxy}` for `{proxy+}`).
    PathParam(String),
}

/// A URI template split at the end of its authority: the authority may only use stage
/// variables (it picks the backend, which must not depend on the client), the rest may also
/// use path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    pub https: bool,
    pub authority: Vec<TemplatePart>,
    pub path_and_query: Vec<TemplatePart>,
}

pub const MAX_URI_TEMPLATE_LEN: usize = 8192;

impl UriTemplate {
    pub fn parse(uri: &str) -> Result<UriTemplate, String> {
        if uri.len() > MAX_URI_TEMPLATE_LEN {
            return Err(format!("longer than {MAX_URI_TEMPLATE_LEN} characters"));
        }
        let (https, rest) = if let Some(r) = uri.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = uri.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "{uri:?} must be an absolute URI starting with http:// or https://"
            ));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(split);
        let authority = parse_parts(authority)?;
        if authority.is_empty() {
            return Err(format!("{uri:?} has no host"));
        }
        if let Some(TemplatePart::PathParam(name)) = authority
            .iter()
            .find(|p| matches!(p, TemplatePart::PathParam(_)))
        {
            return Err(format!(
                "the host part of {uri:?} uses path parameter {{{name}}}: the backend must not be chosen by the client; use a stage variable"
            ));
        }
        Ok(UriTemplate {
            https,
            authority,
            path_and_query: parse_parts(path_and_query)?,
        })
    }

    pub fn stage_variables(&self) -> impl Iterator<Item = &str> {
        self.authority
            .iter()
            .chain(&self.path_and_query)
            .filter_map(|p| match p {
                TemplatePart::StageVariable(n) => Some(n.as_str()),
                _ => None,
            })
    }

    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.path_and_query.iter().filter_map(|p| match p {
            TemplatePart::PathParam(n) => Some(n.as_str()),
            _ => None,
        })
    }
}

fn parse_parts(s: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(['$', '{']) {
        let (before, at) = rest.split_at(pos);
        literal.push_str(before);
        if let Some(after) = at.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
            let expr = &after[..end];
            let name = expr.strip_prefix("stageVariables.").ok_or_else(|| {
                format!("\"${{{expr}}}\" is not supported: only ${{stageVariables.NAME}}")
            })?;
            if !crate::validate::is_stage_variable_name(name) {
                return Err(format!(
                    "stage variable name {name:?} must match [A-Za-z0-9_]{{1,64}}"
                ));
            }
            flush(&mut parts, &mut literal);
            parts.push(TemplatePart::StageVariable(name.to_string()));
            rest = &after[end + 1..];
        } else if let Some(after) = at.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"{{\" in {s:?}"))?;
            let name = &after[..end];
            if !crate::route_key::is_param_name(name) {
                return Err(format!(
                    "{{{name}}} is not a valid path parameter reference"
                ));
            }
            flush(&mut parts, &mut literal);
            parts.push(TemplatePart::PathParam(name.to_string()));
            rest = &after[end + 1..];
        } else {
            // A lone '$' is an ordinary character.
            literal.push('$');
            rest = &at[1..];
        }
    }
    literal.push_str(rest);
    if literal.contains('}') {
        return Err(format!("unmatched \"}}\" in {s:?}"));
    }
    flush(&mut parts, &mut literal);
    Ok(parts)
}

fn flush(parts: &mut Vec<TemplatePart>, literal: &mut String) {
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(std::mem::take(literal)));
    }
}

#[cfg(test)]
mod tests {
    use super::TemplatePart::*;
    use super::*;

    #[test]
    fn splits_authority_from_path() {
        let t = UriTemplate::parse("http://${stageVariables.host}:81/a/{id}?x=1").unwrap();
        assert!(!t.https);
        assert_eq!(
            t.authority,
            vec![StageVariable("host".into()), Literal(":81".into())]
        );
        assert_eq!(
            t.path_and_query,
            vec![
                Literal("/a/".into()),
                PathParam("id".into()),
                Literal("?x=1".into())
            ]
        );
        assert!(
            UriTemplate::parse("https://h")
                .unwrap()
                .path_and_query
                .is_empty()
        );
    }

    #[test]
    fn rejects_bad_templates() {
        for (uri, fragment) in [
            ("ftp://x", "http://"),
            ("http://", "no host"),
            ("http://{id}/x", "host part"),
            ("http://h/${context.x}", "only ${stageVariables"),
            ("http://h/{a", "unclosed"),
            ("http://h/a}", "unmatched"),
        ] {
            let err = UriTemplate::parse(uri).unwrap_err();
            assert!(err.contains(fragment), "{uri}: {err}");
        }
    }
}
