//! Answer normalisation before exact match, after the VQA evaluation's
//! answer processing (Antol et al. 2015, the VQAv2 evaluation script; LLaVA
//! scores its short-answer benchmarks the same way), written here from its
//! description:
//!
//! 1. lowercase; typographic quotes and apostrophes read as ASCII ones;
//! 2. punctuation: the VQA list (`; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`)
//!    is dropped where it touches a space or an end ("yes!", "(red)",
//!    "red, blue") and read as a space inside a word ("t-shirt" = "t shirt");
//!    a comma between digits goes ("1,000" = "1000"). A period goes unless a
//!    digit follows ("yes." = "yes", "3.5" stays). Other marks matter and
//!    stay: `'` (contractions), `:` ("3:30"), `%`, `$`, `#`, `&`;
//! 3. words: number words zero to ten (and "none") become digits, the
//!    articles a / an / the go, a contraction written without its
//!    apostrophe gets it back ("dont" = "don't");
//! 4. whitespace (newlines and tabs included) collapsed to single spaces.
//!
//! Departures from the script, each deliberate: it decides "drop or space"
//! per mark for the whole string (one "- " elsewhere turns "red-white" into
//! "redwhite"); here each occurrence is judged by its neighbours. Its
//! contraction table also maps ambiguous words ("its", "ill", "well",
//! "were", "lets"), which changes ordinary words; those are left alone here.

/// The VQA evaluation's punctuation; see the module note for how each
/// occurrence is treated.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// Number words as the VQA evaluation maps them ("none" answers "how many").
const NUMBERS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// Contractions written without the apostrophe, only where the bare form
/// is not also an ordinary word.
const CONTRACTIONS: [(&str, &str); 40] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldnt", "couldn't"),
    ("couldve", "could've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hes", "he's"),
    ("im", "i'm"),
    ("isnt", "isn't"),
    ("itll", "it'll"),
    ("ive", "i've"),
    ("mightnt", "mightn't"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("shant", "shan't"),
    ("shes", "she's"),
    ("shouldnt", "shouldn't"),
    ("shouldve", "should've"),
    ("thats", "that's"),
    ("theres", "there's"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("wasnt", "wasn't"),
    ("werent", "weren't"),
    ("whats", "what's"),
    ("wheres", "where's"),
    ("whos", "who's"),
    ("wont", "won't"),
    ("wouldnt", "wouldn't"),
    ("wouldve", "would've"),
    ("yall", "y'all"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// The form answers are compared in (see the module note): "The two red
/// circles!" = "2 red circles", "Yes." = "yes", "dont know" = "don't know".
pub fn normalize_answer(answer: &str) -> String {
    let text: Vec<char> = answer
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{02bc}' => '\'',
            '\u{201c}' | '\u{201d}' => '"',
            c => c,
        })
        .collect();
    let at = |i: Option<usize>| i.and_then(|i| text.get(i)).copied();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in text.iter().enumerate() {
        let (before, after) = (at(i.checked_sub(1)), at(i.checked_add(1)));
        let digit = |x: Option<char>| x.is_some_and(|x| x.is_ascii_digit());
        if c == '.' {
            if digit(after) {
                out.push(c);
            }
        } else if PUNCTUATION.contains(&c) {
            let at_edge = |x: Option<char>| x.is_none_or(char::is_whitespace);
            let thousands = c == ',' && digit(before) && digit(after);
            if !(thousands || at_edge(before) || at_edge(after)) {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    let words: Vec<&str> = out
        .split_whitespace()
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            NUMBERS
                .iter()
                .chain(&CONTRACTIONS)
                .find(|(from, _)| *from == w)
                .map_or(w, |(_, to)| to)
        })
        .collect();
    words.join(" ")
}

/// Normalised exact match: the score `glimpse eval vqa` and POPE use.
pub fn answers_match(prediction: &str, reference: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn norm(cases: &[(&str, &str)]) {
        for (raw, want) in cases {
            assert_eq!(normalize_answer(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn case_whitespace_and_trailing_period() {
        norm(&[
            ("  Yes. ", "yes"),
            ("Red", "red"),
            ("RED\n", "red"),
            ("light\tblue  sky", "light blue sky"),
            ("", ""),
            ("   ", ""),
        ]);
    }

    #[test]
    fn articles_go_and_number_words_become_digits() {
        norm(&[
            ("A dog.", "dog"),
            ("the Triangle", "triangle"),
            ("an apple", "apple"),
            ("Two", "2"),
            ("ten", "10"),
            ("none", "0"),
            ("zero cats", "0 cats"),
            ("There are three circles.", "there are 3 circles"),
            // only whole words: not "athe", "someone", "often"
            ("athe someone often", "athe someone often"),
            ("eleven", "eleven"),
        ]);
    }

    #[test]
    fn punctuation_dropped_at_edges_and_spaced_inside_words() {
        norm(&[
            ("yes!", "yes"),
            ("(red)", "red"),
            ("red, blue", "red blue"),
            ("red,blue", "red blue"),
            ("t-shirt", "t shirt"),
            ("red - white", "red white"),
            ("\"circle\"", "circle"),
            ("what? yes", "what yes"),
            ("black/white", "black white"),
            ("<s>", "s"),
        ]);
    }

    #[test]
    fn marks_that_matter_stay() {
        norm(&[
            ("1,000", "1000"),
            ("3.5", "3.5"),
            (".5", ".5"),
            ("e.g.", "eg"),
            ("3:30", "3:30"),
            ("50%", "50%"),
            ("$5", "$5"),
            ("don't", "don't"),
        ]);
    }

    #[test]
    fn contractions_get_their_apostrophe_back() {
        norm(&[
            ("dont know", "don't know"),
            ("Don\u{2019}t know", "don't know"),
            ("isnt", "isn't"),
            ("Im here", "i'm here"),
            ("thats it", "that's it"),
            // ambiguous bare forms stay words
            ("its tail", "its tail"),
            ("well done", "well done"),
            ("lets go", "lets go"),
        ]);
    }

    #[test]
    fn sentences_match_only_when_equal_after_normalising() {
        assert!(answers_match(
            "The shape is a red circle.",
            "the shape is red circle"
        ));
        assert!(answers_match("Two.", "2"));
        assert!(answers_match("Yes!", "yes"));
        // normalisation is not containment
        assert!(!answers_match("The shape is a red circle.", "red"));
        assert!(!answers_match("yes, it is", "yes"));
        assert!(!answers_match("circles", "circle"));
    }
}
