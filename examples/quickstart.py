"""The seed guide's first step, in Kaelum: log LATS traces while answering questions.

    python examples/quickstart.py            # embedded SmolLM2-135M, traces in ./logs
    KAELUM_MATH_WORKER_MODEL=./finetuned_math python examples/quickstart.py
"""

from kaelum import Orchestrator, Settings

settings = Settings()  # reads KAELUM_* variables and .env; e.g. Settings(MATH_WORKER_MODEL="./finetuned_math")
with Orchestrator(settings, enable_logging=True, log_dir="./logs") as orchestrator:
    for question in ["What is 12 + 7?", "What is 3 * 5 + 2?"]:
        result = orchestrator.run(question)
        print(f"{question} -> {result.answer} (verified={result.verified}, reward={result.reward:.2f}, {result.usage['llm_calls']} LLM calls)")
