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

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
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
            Some('(') => self.sequence(')', depth).map(Literal::Tuple),
            Some('[') => self.sequence(']', depth).map(|_| Literal::List),
            Some('{') => self.sequence('}', depth).map(|_| Literal::Dict),
            Some(c) if c.is_ascii_digit() => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            _ => Err(self.unexpected("a value")),
        }
    }

    /// A tuple, list or dict body up to `close`. Dict entries are read as a
    /// flat sequence of keys and values, which is enough to skip over them.
    fn sequence(&mut self, close: char, depth: usize) -> Result<Vec<Literal>, String> {
        self.pos += 1; // the opening bracket
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.nested_value(depth + 1)?);
            self.skip_space();
            if close == '}' && self.eat(':') {
                continue;
            }
            if !self.eat(',') {
                self.skip_space();
                self.expect(close)?;
                return Ok(items);
            }
        }
    }

    fn string(&mut self, quote: char) -> Result<Literal, String> {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                c if c == quote => {
                    self.pos += offset + 1;
                    return Ok(Literal::Str(value));
                }
                c => value.push(c),
            }
        }
        Err(format!("the string starting at byte {start} is not closed"))
    }

    fn integer(&mut self) -> Result<Literal, String> {
        let digits = self.rest().len()
            - self
                .rest()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let text = &self.rest()[..digits];
        let value = text
            .parse()
            .map_err(|_| format!("the integer {text} at byte {} is too large", self.pos))?;
        self.pos += digits;
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
