//! Routing templates: an exchange or routing key written over column values,
//! e.g. `"{aggregate_type}.{event_type}"`.
//!
//! Pure code. A template is parsed once, at start-up (where a syntax error
//! is a configuration error), and rendered per row with a lookup that gives a
//! column's text value. A NULL or missing column, or a result that is empty,
//! longer than AMQP's 255-byte limit or holds a control character, is a
//! [`RenderError`]: the row is a poison row and goes to the dead-letter
//! exchange with that reason. `{{` and `}}` stand for literal braces: this
//! module is the only place that knows it (a constant template's name is
//! [`Template::as_constant`]).

use std::fmt;

/// AMQP short strings (exchange names, routing keys) hold at most 255 bytes.
pub const MAX_SHORT_STRING: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Column(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

/// Why a template string is not a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without a matching `}`.
    #[error("template {0:?}: '{{' at byte {1} is not closed; write '{{{{' for a literal brace")]
    Unclosed(String, usize),
    /// `}` without a matching `{`.
    #[error(
        "template {0:?}: '}}' at byte {1} has no opening '{{'; write '}}}}' for a literal brace"
    )]
    Unopened(String, usize),
    /// `{}`.
    #[error("template {0:?}: '{{}}' at byte {1} names no column")]
    EmptyName(String, usize),
}

/// Why a row could not be rendered (the row is dead-lettered with this
/// reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A column the template uses is NULL in this row.
    #[error("column {0} is NULL")]
    Null(String),
    /// A column the template uses is not in the table.
    #[error("column {0} does not exist")]
    Missing(String),
    /// The template rendered to an empty string.
    #[error("template {0:?} rendered empty")]
    Empty(String),
    /// The result holds a control character (a newline, a NUL, ...): no
    /// exchange name or routing key should, and logs would mangle it.
    #[error("template {template:?} rendered a control character at byte {at}")]
    ControlChar {
        /// The template.
        template: String,
        /// Where, in the rendered text.
        at: usize,
    },
    /// The result is longer than AMQP allows.
    #[error("template {template:?} rendered {len} bytes; AMQP allows at most 255")]
    TooLong {
        /// The template.
        template: String,
        /// The rendered length.
        len: usize,
    },
}

/// What a lookup says about a column of the row being rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnValue<'a> {
    /// The column's text.
    Text(&'a str),
    /// The column is NULL.
    Null,
    /// The table has no such column.
    Missing,
}

impl Template {
    /// Parses `{column}` placeholders and literal text.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unopened(source.into(), at)),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => {
                                return Err(TemplateError::Unclosed(source.into(), at))
                            }
                            Some((_, ch)) => name.push(ch),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(TemplateError::EmptyName(source.into(), at));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Column(name));
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            source: source.to_string(),
            segments,
        })
    }

    /// The columns the template uses, in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the template uses no column (a fixed exchange name).
    pub fn is_constant(&self) -> bool {
        self.columns().next().is_none()
    }

    /// The name a template without columns stands for (`{{` read as `{`);
    /// `None` if it uses columns.
    pub fn as_constant(&self) -> Option<String> {
        if !self.is_constant() {
            return None;
        }
        Some(
            self.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(text) | Segment::Column(text) => text.as_str(),
                })
                .collect(),
        )
    }

    /// Renders the template for one row.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> ColumnValue<'a>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Column(name) => match lookup(name) {
                    ColumnValue::Text(text) => out.push_str(text),
                    ColumnValue::Null => return Err(RenderError::Null(name.clone())),
                    ColumnValue::Missing => return Err(RenderError::Missing(name.clone())),
                },
            }
        }
        if out.is_empty() {
            return Err(RenderError::Empty(self.source.clone()));
        }
        if out.len() > MAX_SHORT_STRING {
            return Err(RenderError::TooLong {
                template: self.source.clone(),
                len: out.len(),
            });
        }
        if let Some((at, _)) = out.char_indices().find(|(_, c)| c.is_control()) {
            return Err(RenderError::ControlChar {
                template: self.source.clone(),
                at,
            });
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row<'a>(pairs: &'a [(&'a str, Option<&'a str>)]) -> impl Fn(&str) -> ColumnValue<'a> + 'a {
        move |name| match pairs.iter().find(|(n, _)| *n == name) {
            Some((_, Some(v))) => ColumnValue::Text(v),
            Some((_, None)) => ColumnValue::Null,
            None => ColumnValue::Missing,
        }
    }

    #[test]
    fn default_routing_key_joins_aggregate_and_event_type() {
        let t = Template::parse("{aggregate_type}.{event_type}").unwrap();
        assert_eq!(
            t.columns().collect::<Vec<_>>(),
            ["aggregate_type", "event_type"]
        );
        let r = row(&[
            ("aggregate_type", Some("order")),
            ("event_type", Some("created")),
        ]);
        assert_eq!(t.render(&r).unwrap(), "order.created");
    }

    #[test]
    fn constant_templates_and_escaped_braces() {
        let t = Template::parse("outbox").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.render(row(&[])).unwrap(), "outbox");
        let t = Template::parse("{{lit}}.{ x }").unwrap();
        assert_eq!(t.render(row(&[("x", Some("v"))])).unwrap(), "{lit}.v");
        assert_eq!(t.as_constant(), None);
        let t = Template::parse("events.{{v2}}").unwrap();
        assert_eq!(t.as_constant().as_deref(), Some("events.{v2}"));
    }

    #[test]
    fn control_characters_in_a_rendered_name_are_render_errors() {
        let t = Template::parse("{aggregate_type}.{event_type}").unwrap();
        assert_eq!(
            t.render(row(&[
                ("aggregate_type", Some("order")),
                ("event_type", Some("paid\nforged"))
            ])),
            Err(RenderError::ControlChar {
                template: "{aggregate_type}.{event_type}".into(),
                at: 10
            })
        );
    }

    #[test]
    fn syntax_errors_name_the_template_and_position() {
        assert_eq!(
            Template::parse("a.{b"),
            Err(TemplateError::Unclosed("a.{b".into(), 2))
        );
        assert_eq!(
            Template::parse("a}"),
            Err(TemplateError::Unopened("a}".into(), 1))
        );
        assert_eq!(
            Template::parse("x{}"),
            Err(TemplateError::EmptyName("x{}".into(), 1))
        );
        let msg = Template::parse("a.{b").unwrap_err().to_string();
        assert!(msg.contains("not closed"), "{msg}");
    }

    #[test]
    fn poison_rows_are_render_errors_not_empty_keys() {
        let t = Template::parse("{aggregate_type}.{event_type}").unwrap();
        assert_eq!(
            t.render(row(&[("aggregate_type", None), ("event_type", Some("e"))])),
            Err(RenderError::Null("aggregate_type".into()))
        );
        assert_eq!(
            t.render(row(&[("aggregate_type", Some("a"))])),
            Err(RenderError::Missing("event_type".into()))
        );
        let t = Template::parse("{k}").unwrap();
        assert_eq!(
            t.render(row(&[("k", Some(""))])),
            Err(RenderError::Empty("{k}".into()))
        );
        let long = "x".repeat(256);
        assert!(matches!(
            t.render(row(&[("k", Some(&long))])),
            Err(RenderError::TooLong { len: 256, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_input_parses_or_errors_without_panicking(s in ".{0,40}") {
            if let Ok(t) = Template::parse(&s) {
                let _ = t.render(|_| ColumnValue::Text("v"));
            }
        }

        #[test]
        fn literal_text_without_braces_renders_as_itself(s in "[a-z0-9._-]{1,60}") {
            let t = Template::parse(&s).unwrap();
            prop_assert_eq!(t.render(|_| ColumnValue::Null).unwrap(), s);
        }
    }
}
