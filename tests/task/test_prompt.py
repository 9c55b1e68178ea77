from fedmedlora.task.prompt import PromptStyle, messages


def test_tuned_prompt_lists_only_the_site_types_in_schema_order(schema):
    system, user = messages("No fever.", ["negation", "problem", "drug"], schema)
    assert system == {"role": "system", "content": "Types: problem, drug, negation."}
    assert user == {"role": "user", "content": "No fever."}


def test_zero_shot_prompt_explains_the_markup_and_defines_each_type(schema):
    system, _ = messages("No fever.", ["problem", "negation"], schema, PromptStyle(zero_shot=True))
    text = system["content"]
    assert '<span class="TYPE">' in text and 'id="N"' in text and 'ref="N"' in text
    assert f"- problem: {schema.definition('problem')}" in text
    assert f"- negation: {schema.definition('negation')}" in text
    assert "drug:" not in text
