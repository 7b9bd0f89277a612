//! Small structured values from fuzz bytes: strings over a chosen alphabet, picks from lists.
//! Built on `arbitrary::Unstructured`, which answers defaults once the bytes run out, so every
//! input makes a value.

use arbitrary::Unstructured;

pub struct Gen<'a>(pub Unstructured<'a>);

impl<'a> Gen<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Gen(Unstructured::new(data))
    }

    pub fn done(&self) -> bool {
        self.0.is_empty()
    }

    pub fn int(&mut self, below: u32) -> u32 {
        self.0
            .int_in_range(0..=below.saturating_sub(1))
            .unwrap_or(0)
    }

    pub fn bool(&mut self) -> bool {
        self.int(2) == 1
    }

    pub fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.int(from.len() as u32) as usize].clone()
    }

    /// Up to `max` characters, each from `alphabet`.
    pub fn string(&mut self, alphabet: &str, max: u32) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let len = self.int(max + 1);
        (0..len).map(|_| self.pick(&chars)).collect()
    }
}
