//! Chat templates rendered as transformers' `apply_chat_template(..,
//! tokenize=False)`: hand-written templates with expectations worked out
//! from jinja2's rules (trim_blocks, lstrip_blocks, Python `str()`), then
//! every conversation recorded in `fixtures/decoders/*/reference.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glimpse_data::{ChatMessage, ChatTemplate, DataError, SpecialTokens, TextTokenizer};

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

fn llama_tokens() -> SpecialTokens {
    SpecialTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..Default::default()
    }
}

// Block tags on their own, indented lines: lstrip_blocks removes the
// indentation, trim_blocks the newline after each tag.
const CHATML: &str = "{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
";

#[test]
fn chatml_with_default_system_message() -> Result<()> {
    let t = ChatTemplate::new(CHATML, SpecialTokens::default())?;
    assert_eq!(
        t.render(&msgs(&[("user", "Hi")]), true)?,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(
            &msgs(&[
                ("system", "Be brief."),
                ("user", "Hi"),
                ("assistant", "Hello!")
            ]),
            false
        )?,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n"
    );
    Ok(())
}

// `{{ .. }}` lines keep their indentation and newline (lstrip_blocks and
// trim_blocks touch block tags only).
const LLAMA2: &str = r"{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set rest = messages[1:] %}
{% else %}
    {% set system = none %}
    {% set rest = messages %}
{% endif %}
{% for message in rest %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% if loop.first and system is not none %}
            {% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] %}
        {% else %}
            {% set content = message['content'] %}
        {% endif %}
        {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ ' ' + message['content'] | trim + ' ' + eos_token }}
    {% endif %}
{% endfor %}";

#[test]
fn llama2_with_bos_token_strip_and_trim() -> Result<()> {
    let t = ChatTemplate::new(LLAMA2, llama_tokens())?;
    let conversation = msgs(&[
        ("system", "Be kind."),
        ("user", "  Hi there "),
        ("assistant", " Hello! "),
        ("user", "Bye"),
    ]);
    assert_eq!(
        t.render(&conversation, true)?,
        "        <s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n  Hi there [/INST]\n\
         \x20        Hello! </s>\n        <s>[INST] Bye [/INST]\n"
    );
    Ok(())
}

#[test]
fn raise_exception_on_roles_not_alternating() -> Result<()> {
    let t = ChatTemplate::new(LLAMA2, llama_tokens())?;
    let e = t
        .render(&msgs(&[("user", "a"), ("user", "b")]), true)
        .expect_err("roles do not alternate");
    assert!(matches!(e, DataError::ChatTemplate { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(
            "raise_exception: Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    Ok(())
}

const NAMESPACE_TOJSON: &str = r#"{% set ns = namespace(count=0) %}
{% for m in messages %}
    {% set ns.count = ns.count + 1 %}
    {% if loop.first %}[{% endif %}
{{ m | tojson }}{% if not loop.last %}, {% else %}]{% endif %}

{% endfor %}
count={{ ns.count }} {{ {'a': [1, 2.5, none, true], 'b': 'é"\t'} | tojson }}
{{ [1, {'k': 'v', 'e': []}] | tojson(indent=2) }}
{{ {'z': 1, 'a': 2} | tojson(sort_keys=true) }}"#;

#[test]
fn namespace_loop_first_last_and_tojson() -> Result<()> {
    let t = ChatTemplate::new(NAMESPACE_TOJSON, SpecialTokens::default())?;
    let out = t.render(&msgs(&[("user", "Hi"), ("assistant", "Ho \"q\"")]), false)?;
    // json.dumps: ", " and ": " separators, keys in insertion order,
    // non-ASCII kept, no HTML escaping; with indent "," and newlines.
    assert_eq!(
        out,
        "[{\"role\": \"user\", \"content\": \"Hi\"}, \n\
         {\"role\": \"assistant\", \"content\": \"Ho \\\"q\\\"\"}]\n\
         count=2 {\"a\": [1, 2.5, null, true], \"b\": \"é\\\"\\t\"}\n\
         [\n  1,\n  {\n    \"k\": \"v\",\n    \"e\": []\n  }\n]\n\
         {\"a\": 2, \"z\": 1}"
    );
    Ok(())
}

const PYTHON_METHODS: &str = "{% for m in messages %}
{{ m.role.upper() }}|{{ m.content.split() }}|{{ m.content.startswith('Hi') }}|{{ m.content.replace('o', '0') }}|{{ m.content.title() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}|{{ m.content.lower() }}|{{ m.content.endswith('?') }}
{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}
{{ m.get('name', 'anon') }} {{ m.get('missing') }}
{% endfor %}
{{ true }} {{ none }} {{ [1, 'a', none] }} {{ 2.0 }} {{ {'k': false} }}";

#[test]
fn python_methods_and_python_printing() -> Result<()> {
    let t = ChatTemplate::new(PYTHON_METHODS, SpecialTokens::default())?;
    let out = t.render(&msgs(&[("user", "  Hi how are you?  ")]), false)?;
    assert_eq!(
        out,
        "USER|['Hi', 'how', 'are', 'you?']|False|  Hi h0w are y0u?  |  Hi How Are You?  \
         |Hi how are you?  |  Hi how are you?|  hi how are you?  |False\n\
         role=user;content=  Hi how are you?  ;anon None\n\
         True None [1, 'a', None] 2.0 {'k': False}"
    );
    Ok(())
}

#[test]
fn loop_controls_generation_tag_and_trailing_newline() -> Result<()> {
    let src = "{% for m in messages %}
{% if m.role == 'system' %}{% continue %}{% endif %}
{% if loop.index > 3 %}{% break %}{% endif %}
{{ loop.index }}:{{ m.content }}
{% endfor %}
{% generation %}
gen {{ messages | length }}
{% endgeneration %}
end
";
    let t = ChatTemplate::new(src, SpecialTokens::default())?;
    let mut conversation = msgs(&[("system", "s")]);
    conversation.extend((0..5).map(|i| ChatMessage::new("user", i.to_string())));
    // The source's one trailing newline is dropped, as jinja2 does.
    assert_eq!(t.render(&conversation, false)?, "2:0\n3:1\ngen 6\nend");

    let two = ChatTemplate::new("{{ messages | length }}\n\n", SpecialTokens::default())?;
    assert_eq!(two.render(&[], false)?, "0\n");
    Ok(())
}

#[test]
fn special_tokens_tools_and_strftime() -> Result<()> {
    let src = "{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ tools is none }}|{{ documents is none }}|{{ strftime_now('%Y') | length }}";
    let t = ChatTemplate::new(src, llama_tokens())?;
    assert_eq!(t.render(&[], false)?, "<s>|</s>|False|True|True|4");
    Ok(())
}

#[test]
fn invalid_template_names_the_line() {
    let e = ChatTemplate::new(
        "{% for m in messages %}\n{{ m }\n{% endfor %}",
        SpecialTokens::default(),
    )
    .expect_err("unclosed expression");
    let msg = e.to_string();
    assert!(
        msg.starts_with("chat template chat_template: cannot compile"),
        "{msg}"
    );
    assert!(msg.contains("chat_template:2"), "{msg}");
    assert!(!msg.contains('\n'));
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::write(dir.join(name), text).with_context(|| name.to_string())
}

#[test]
fn model_dir_sources_in_transformers_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    assert!(ChatTemplate::from_model_dir(dir.path())?.is_none());

    // A list of named templates; an AddedToken object; a null token.
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"},
            "eos_token": "</s>", "pad_token": null,
            "chat_template": [{"name": "tool_use", "template": "tools"},
                              {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ pad_token }}"}]}"#,
    )?;
    let t = ChatTemplate::from_model_dir(dir.path())?.context("template")?;
    assert_eq!(t.special_tokens(), &llama_tokens());
    assert_eq!(t.render(&msgs(&[("user", "x")]), false)?, "<s>x</s>");

    // chat_template.jinja wins over tokenizer_config.json.
    write(
        dir.path(),
        "chat_template.jinja",
        "jinja {{ messages | length }}\n",
    )?;
    let t = ChatTemplate::from_model_dir(dir.path())?.context("template")?;
    assert_eq!(t.render(&msgs(&[("user", "x")]), false)?, "jinja 1");
    Ok(())
}

#[test]
fn model_dir_errors_name_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
    )?;
    let msg = ChatTemplate::from_model_dir(dir.path())
        .expect_err("no default")
        .to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("\"default\""),
        "{msg}"
    );

    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"eos_token": 7, "chat_template": "x"}"#,
    )?;
    let msg = ChatTemplate::from_model_dir(dir.path())
        .expect_err("bad token")
        .to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("eos_token"),
        "{msg}"
    );

    write(dir.path(), "tokenizer_config.json", "{")?;
    let msg = ChatTemplate::from_model_dir(dir.path())
        .expect_err("bad json")
        .to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
    Ok(())
}

fn decoder_fixtures() -> Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/decoders");
    let mut dirs = Vec::new();
    if root.is_dir() {
        for entry in std::fs::read_dir(&root)? {
            let path = entry?.path();
            if path.join("reference.json").is_file() {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Every conversation transformers rendered: the same text, the same ids
/// once tokenised without added special tokens (what `apply_chat_template`
/// does), and the template's error where it raised one.
#[test]
fn fixtures_render_as_transformers() -> Result<()> {
    let dirs = decoder_fixtures()?;
    if dirs.is_empty() {
        eprintln!("no fixtures/decoders/*/reference.json; skipping");
        return Ok(());
    }
    let mut checked = 0;
    for dir in &dirs {
        let name = dir.display();
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let Some(chats) = reference.get("chat").and_then(|c| c.as_array()) else {
            continue;
        };
        let template =
            ChatTemplate::from_model_dir(dir)?.with_context(|| format!("{name}: no template"))?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        for chat in chats {
            let case = format!("{name} {}", chat["name"]);
            let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone())?;
            let agp = chat["add_generation_prompt"]
                .as_bool()
                .context("add_generation_prompt")?;
            let rendered = template.render(&messages, agp);
            if let Some(error) = chat.get("error").and_then(|e| e.as_str()) {
                let e = rendered.expect_err(&case).to_string();
                assert!(e.contains(error), "{case}: {e}");
            } else {
                let text = rendered.with_context(|| case.clone())?;
                assert_eq!(text, chat["text"].as_str().context("text")?, "{case}");
                if let Some(ids) = chat.get("ids") {
                    let ids: Vec<u32> = serde_json::from_value(ids.clone())?;
                    let enc = tokenizer
                        .inner()
                        .encode(text.as_str(), false)
                        .map_err(|e| anyhow::anyhow!("{case}: {e}"))?;
                    assert_eq!(enc.get_ids(), ids.as_slice(), "{case} ids");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "fixtures without chat cases");
    eprintln!("{checked} recorded conversations match");
    Ok(())
}
