//! The Python literal subset that `.npy` headers are written in: a dict with
//! string keys whose values are strings, booleans, `None`, integers, and
//! (possibly nested) tuples and lists of those.

/// One parsed value. Lists are only recognised, never read, so their
/// contents are not kept.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    Tuple(Vec<Literal>),
    List,
    Dict,
}

/// One `key: value` entry of the header dict, with the value's source text
/// for messages.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    pub key: String,
    pub value: Literal,
    pub text: &'a str,
}

/// Parses `text` as one dict literal followed only by whitespace. The error
/// says what was wrong and where.
pub(super) fn parse_dict(text: &str) -> Result<Vec<Entry<'_>>, String> {
    let mut parser = Parser { text, pos: 0 };
    parser.skip_space();
    parser.expect('{')?;
    let mut entries = Vec::new();
    loop {
        parser.skip_space();
        if parser.eat('}') {
            break;
        }
        let key = match parser.value()? {
            Literal::Str(key) => key,
            other => return Err(format!("dict key {other:?} is not a string")),
        };
        parser.skip_space();
        parser.expect(':')?;
        parser.skip_space();
        let start = parser.pos;
        let value = parser.value()?;
        let text = &text[start..parser.pos];
        entries.push(Entry { key, value, text });
        parser.skip_space();
        if !parser.eat(',') {
            parser.skip_space();
            parser.expect('}')?;
            break;
        }
    }
    parser.skip_space();
    if parser.pos != text.len() {
        return Err(format!(
            "unexpected text after the dict at byte {}",
            parser.pos
        ));
    }
    Ok(entries)
}

/// Nesting deeper than this is refused, so hostile headers cannot overflow
/// the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Python's whitespace between tokens, and no other: a no-break space or a
    /// vertical tab is a syntax error to numpy's `ast.literal_eval`, so here too.
    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len()
            - rest
                .trim_start_matches([' ', '\t', '\x0c', '\n', '\r'])
                .len();
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, expected: char) -> Result<(), String> {
        if self.eat(expected) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{expected}'")))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(found) => format!("expected {wanted} at byte {} but found {found:?}", self.pos),
            None => format!("expected {wanted} but the header ends"),
        }
    }

    fn value(&mut self) -> Result<Literal, String> {
        self.nested_value(0)
    }

    fn nested_value(&mut self, depth: usize) -> Result<Literal, String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        match self.peek() {
            Some(quote @ ('\'' | '"')) => self.string(quote),
            Some('(') => {
                let (mut items, commas) = self.sequence(')', depth)?;
                // As in Python, parentheses around one value without a comma
                // group it: `(2)` is 2, not a tuple.
                Ok(match (items.len(), commas) {
                    (1, 0) => items.remove(0),
                    _ => Literal::Tuple(items),
                })
            }
            Some('[') => self.sequence(']', depth).map(|_| Literal::List),
            Some('{') => self.sequence('}', depth).map(|_| Literal::Dict),
            Some(c) if c.is_ascii_digit() => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            _ => Err(self.unexpected("a value")),
        }
    }

    /// A tuple, list or dict body up to `close`, with the number of commas in it.
    /// Dict entries are read as a flat sequence of keys and values, which is
    /// enough to skip over them.
    fn sequence(&mut self, close: char, depth: usize) -> Result<(Vec<Literal>, usize), String> {
        self.pos += 1; // the opening bracket
        let mut items = Vec::new();
        let mut commas = 0;
        loop {
            self.skip_space();
            if self.eat(close) {
                return Ok((items, commas));
            }
            items.push(self.nested_value(depth + 1)?);
            self.skip_space();
            if close == '}' && self.eat(':') {
                continue;
            }
            if !self.eat(',') {
                self.skip_space();
                self.expect(close)?;
                return Ok((items, commas));
            }
            commas += 1;
        }
    }

    /// A string literal with Python's escapes; like Python, a line break inside
    /// one is an error and an unknown escape keeps its backslash.
    fn string(&mut self, quote: char) -> Result<Literal, String> {
        let start = self.pos;
        let unclosed = || format!("the string starting at byte {start} is not closed");
        let mut value = String::new();
        let mut chars = self.text[start + 1..].char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, escaped) = chars.next().ok_or_else(unclosed)?;
                    match escaped {
                        '\n' => {} // a continued line
                        '\\' | '\'' | '"' => value.push(escaped),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'a' => value.push('\x07'),
                        'b' => value.push('\x08'),
                        'f' => value.push('\x0c'),
                        'v' => value.push('\x0b'),
                        '0'..='7' => {
                            let mut code = escaped.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                match chars.clone().next().and_then(|(_, c)| c.to_digit(8)) {
                                    Some(digit) => {
                                        code = code * 8 + digit;
                                        chars.next();
                                    }
                                    None => break,
                                }
                            }
                            // At most 0o777: always a character.
                            value.extend(char::from_u32(code));
                        }
                        'x' | 'u' | 'U' => {
                            let digits = match escaped {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                            let code = (hex.len() == digits)
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    format!(
                                        "the escape \\{escaped}{hex} at byte {} is not valid",
                                        start + 1 + offset
                                    )
                                })?;
                            value.push(code);
                        }
                        other => {
                            value.push('\\');
                            value.push(other);
                        }
                    }
                }
                '\n' | '\r' => return Err(unclosed()),
                c if c == quote => {
                    self.pos = start + 1 + offset + 1;
                    return Ok(Literal::Str(value));
                }
                c => value.push(c),
            }
        }
        Err(unclosed())
    }

    /// A decimal integer as Python writes one: `_` between digits allowed, no
    /// leading zero before other digits (`007` is a syntax error in Python 3).
    fn integer(&mut self) -> Result<Literal, String> {
        let rest = self.rest();
        let len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '_')
                .len();
        let text = &rest[..len];
        let invalid = || format!("{text} at byte {} is not a Python integer", self.pos);
        if text.ends_with('_') || text.contains("__") {
            return Err(invalid());
        }
        let digits: String = text.chars().filter(|&c| c != '_').collect();
        if digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
            return Err(invalid());
        }
        let value = digits
            .parse()
            .map_err(|_| format!("the integer {text} at byte {} is too large", self.pos))?;
        self.pos += len;
        Ok(Literal::Int(value))
    }

    fn word(&mut self) -> Result<Literal, String> {
        let rest = self.rest();
        let len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                .len();
        let value = match &rest[..len] {
            "True" => Literal::Bool(true),
            "False" => Literal::Bool(false),
            "None" => Literal::None,
            other => return Err(format!("unknown name {other:?} at byte {}", self.pos)),
        };
        self.pos += len;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, Literal)> {
        parse_dict(text)
            .unwrap()
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect()
    }

    #[test]
    fn parses_numpy_style_and_hand_written_dicts() {
        let numpy = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }          \n";
        assert_eq!(
            values(numpy),
            vec![
                ("descr".into(), Literal::Str("<f8".into())),
                ("fortran_order".into(), Literal::Bool(false)),
                (
                    "shape".into(),
                    Literal::Tuple(vec![Literal::Int(3), Literal::Int(4)])
                ),
            ]
        );
        let terse = r#"{"shape":(5,),"fortran_order":True,"descr":"|u1"}"#;
        assert_eq!(values(terse)[0].1, Literal::Tuple(vec![Literal::Int(5)]));
        assert_eq!(values(terse)[1].1, Literal::Bool(true));
        assert_eq!(values("{ 'shape' : ( ) }")[0].1, Literal::Tuple(vec![]));
        assert_eq!(values("{'shape': (2)}")[0].1, Literal::Int(2));
        assert_eq!(
            values("{'shape': ((2),)}")[0].1,
            Literal::Tuple(vec![Literal::Int(2)])
        );
        assert_eq!(values("{}"), vec![]);
    }

    #[test]
    fn keeps_the_source_text_of_structured_descrs() {
        let text = "{'descr': [('a', '<i4'), ('b', '<f8', (2,))], 'x': {'k': None}}";
        let entries = parse_dict(text).unwrap();
        assert_eq!(entries[0].value, Literal::List);
        assert_eq!(entries[0].text, "[('a', '<i4'), ('b', '<f8', (2,))]");
        assert_eq!(entries[1].value, Literal::Dict);
    }

    #[test]
    fn reports_malformed_dicts() {
        for (text, problem) in [
            ("", "expected '{' but the header ends"),
            ("{'descr': '<f8'", "expected '}' but the header ends"),
            ("{'descr' '<f8'}", "expected ':'"),
            ("{'descr': '<f8}", "not closed"),
            ("{'shape': (3 4)}", "expected ')'"),
            ("{'a': Nope}", "unknown name \"Nope\""),
            ("{'a': 99999999999999999999999}", "too large"),
            ("{'a': -1}", "expected a value"),
            ("{3: 1}", "is not a string"),
            ("{'a': 1} x", "unexpected text after the dict"),
        ] {
            let err = parse_dict(text).unwrap_err();
            assert!(err.contains(problem), "{text:?}: {err}");
        }
        let deep = format!("{{'a': {}{}}}", "(".repeat(100), ")".repeat(100));
        assert!(parse_dict(&deep).unwrap_err().contains("nest deeper"));
    }
}
