//! Numbers read out of the plugin's error messages. Also used alone by the emulator's header
//! tests (`tests/header_hardening.rs`), which include just this file.

/// The number just before `word` in `text`: "… would be 1025 headers, 1048577 bytes: …".
pub fn number_before(text: &str, word: &str) -> usize {
    let at = text
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in {text}"));
    let digits: String = text[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}
