"""The prompt of an image question (accuracy, fitprune-fit) under the checkpoint's chat template."""

import copy

from llava_freepruner.tools.prompts import image_question_inputs

STRING_CONTENT = ("{% for message in messages %}{{ 'USER: ' + message['content'] + '\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def test_a_template_taking_string_content_gets_the_image_and_the_question_as_text(tiny_models, photos):
    model, processor = tiny_models()
    listed = image_question_inputs(processor, photos["chelsea"], "What is it?")
    processor = copy.deepcopy(processor)
    processor.chat_template = STRING_CONTENT
    inputs = image_question_inputs(processor, photos["chelsea"], "What is it?")
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert placeholders == int((listed["input_ids"] == model.config.image_token_id).sum()) > 0
    text = processor.decode(inputs["input_ids"][0])
    assert text.index("USER:") < text.index("What is it?") < text.index("ASSISTANT:")
