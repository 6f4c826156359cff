"""Signals the persona router reads from a message.

The text is lower-cased and split into words; lexicon entries match whole words and phrases,
never substrings ("good" is not "go", "know" is not "now"). At each position the longest entry
wins, so "ip address" (technical) and "home address" (personal data) never fall back to the bare
word "address", and "stress test" is not stress. Emotions, urgency and learning intent look back
up to four words in the same clause for a negator ("I'm not frustrated"); the look-back stops at
punctuation, at conjunctions and at any other matched phrase, so in "it doesn't work and I'm
frustrated" the frustration stands.

Everything here is plain data plus a few regular expressions that run in linear time: a
typical message is analysed in about a tenth of a millisecond, far under routing's 5 ms budget.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DISTRESS = ("frustrated", "confused", "stressed", "anxious", "sad", "disappointed", "overwhelmed")
POSITIVE = ("happy", "excited", "curious")
EMOTIONS = DISTRESS + POSITIVE

# Long messages: only the head and tail are read, so a 1 MiB paste routes in a few ms like
# any message (the request is nearly always at the start or the end of a paste).
MAX_HEAD_CHARS = 6_000
MAX_TAIL_CHARS = 2_000

# --------------------------------------------------------------------------------------------
# Lexicon data. Each spec is "phrase=weight|phrase=weight". In a phrase, "*" is exactly one
# word and "..." is zero to three words. A phrase may appear under several categories: it then
# carries every tag (e.g. "don't know what" is both confusion and a learning intent).
# --------------------------------------------------------------------------------------------

_EMOTION_SPECS: dict[str, str] = {
    "frustrated": (
        "frustrated=1|frustrating=.9|frustration=.9|annoyed=.8|annoying=.6|irritated=.8|"
        "irritating=.7|fed up=.9|sick of=.8|tired of=.7|hate=.6|hate this=.8|hate it=.7|"
        "furious=1|angry=.8|mad=.5|pissed=.9|pissed off=1|driving me crazy=1|drives me crazy=.9|"
        "driving me nuts=1|drives me nuts=.9|driving me insane=1|losing my mind=1|going insane=.8|"
        "banging my head=1|pulling my hair=1|wits end=1|wit end=1|ugh=.6|argh=.7|grr=.6|wtf=.6|"
        "ffs=.8|dammit=.7|damnit=.7|damn=.4|goddamn=.7|fuck=.7|fucking=.6|shit=.5|crap=.4|"
        "for hours=.45|all day=.35|for days=.5|all night=.4|all morning=.35|since yesterday=.35|"
        "still doesn't work=.6|still not working=.6|still broken=.6|still failing=.5|"
        "still crashing=.5|nothing works=.8|keeps failing=.4|keeps crashing=.4|"
        "again and again=.5|over and over=.4|give up=.6|giving up=.6|i give up=.9|had enough=.8|"
        "stuck=.35|so stuck=.6|stuck on this=.5|sigh=.5|hours debugging=.6|days debugging=.7|"
        "wasted=.4|wasted hours=.8|wasted a day=.8|wasted my=.6"
    ),
    "confused": (
        "confused=1|confusing=.8|confusion=.8|puzzled=.8|baffled=.9|perplexed=.9|bewildered=.9|"
        "don't understand=.8|do not understand=.8|don't get it=.8|doesn't make sense=.8|"
        "does not make sense=.8|makes no sense=.8|make no sense=.8|no idea=.5|no clue=.6|"
        "not sure=.3|unsure=.35|i'm lost=.8|totally lost=.9|completely lost=.9|so lost=.8|"
        "a bit lost=.6|bit lost=.6|pretty lost=.8|really lost=.8|lost here=.6|feel lost=.7|feeling lost=.7|kind of lost=.6|over my head=.8|"
        "can't wrap my head=.9|wrap my head around=.6|head is spinning=.9|what am i missing=.5|"
        "am i missing something=.5|mixed up=.5|don't know what=.4|idk=.4|huh=.4|"
        "can't figure out=.5|can't figure=.5|cannot figure out=.5|don't get why=.6|"
        "don't get how=.6|don't get what=.6"
    ),
    "stressed": (
        "stressed=1|stressed out=1|stress=.6|stressful=.8|under pressure=.8|pressure=.4|"
        "burnout=.9|burned out=.9|burnt out=.9|burning out=.9|exhausted=.8|swamped=.7|"
        "drowning=.8|too much=.4|can't cope=1|cannot cope=1|can't handle=.6|breaking point=1|"
        "on edge=.7|get fired=.8|going to get fired=1|gonna get fired=1|lose my job=.9|"
        "tense=.4|can't sleep=.7|can't focus=.5|can't concentrate=.5|imposter=.6|impostor=.6|"
        "not good enough=.8|behind schedule=.4"
    ),
    "overwhelmed": (
        "overwhelmed=1|overwhelming=.8|too much to learn=.9|so much to learn=.6|"
        "don't know where to start=.7|don't know where to begin=.7|where do i even start=.8|"
        "where do i even begin=.8|in over my head=1|drowning in=.8"
    ),
    "anxious": (
        "anxious=1|anxiety=.9|worried=.8|worry=.6|worrying=.7|nervous=.8|scared=.8|afraid=.6|"
        "terrified=1|panic=.7|panicking=1|freaking out=1|freak out=.7|dread=.7|dreading=.8|"
        "fear=.5|frightened=.9|uneasy=.6|scary=.5"
    ),
    "sad": (
        "sad=1|depressed=1|depressing=.7|feeling down=.9|feel down=.8|so down=.7|feeling low=.8|"
        "lonely=.9|alone=.5|unhappy=.9|miserable=1|heartbroken=1|crying=.9|cry=.7|cried=.8|"
        "upset=.8|hopeless=1|grief=1|grieving=1|passed away=1|funeral=.8|devastated=1|"
        "rough day=.6|bad day=.6|tough day=.6|hard day=.5|rough week=.6|lost my=.5|lost all my=.6|died=.6|passed=0|feel hurt=.8|i'm hurt=.8|feel empty=.9|worthless=1|"
        "hurt myself=1|kill myself=1|end my life=1|want to die=1|suicidal=1"
    ),
    "disappointed": (
        "disappointed=1|disappointing=.8|disappointment=.9|let down=.7|let me down=.9|"
        "letdown=.7|regret=.6|expected better=.7|not what i expected=.6|underwhelming=.6|"
        "underwhelmed=.7|bummed=.8|bummer=.6"
    ),
    "curious": (
        "curious=1|wondering=.6|i wonder=.6|intrigued=.8|fascinated=.8|fascinating=.6|"
        "interested in=.5|curious how=1|curious about=1|curious why=1|curious what=1|"
        "curious whether=1"
    ),
    "happy": (
        "happy=1|glad=.8|delighted=1|thrilled=1|pleased=.7|relieved=.8|love it=.6|yay=.8|"
        "finally works=1|it works=.7|works now=.8|it worked=.8|that worked=.8|"
        "worked perfectly=.9|nailed it=.7|woohoo=.9|awesome=.4|great news=.8|good news=.7|"
        "proud=.8|grateful=.5|passed my=.8|i passed=.8|finally passed=.9|got the job=1|"
        "got promoted=1|got hired=1|got accepted=.9|love=.3|that fixed=.7|fixed it=.6|that solved=.7|solved it=.6|"
        "problem solved=.8"
    ),
    "excited": "excited=1|exciting=.7|can't wait=.8|pumped=.8|stoked=.9|hyped=.8",
}

_URGENCY_SPEC = (
    "urgent=.7|urgently=.7|asap=.6|as soon as possible=.6|immediately=.5|emergency=.8|"
    "critical=.4|right now=.4|now=.15|quickly=.2|quick=.1|hurry=.6|rush=.4|deadline=.4|"
    "due tomorrow=.5|due today=.6|in an hour=.5|prod is down=.6|production is down=.6|"
    "site is down=.6|server is down=.5|everything is down=.7|outage=.5|losing money=.7|sos=.7|"
    "help me now=.6|need help now=.6|time sensitive=.6|top priority=.5|blocker=.4|p0=.6|"
    "sev1=.7|on fire=.6|help=.1"
)

_LEARNING_SPEC = (
    "explain=1|explanation=.8|eli5=1|understand=.6|understanding=.4|help me understand=1|"
    "want to understand=1|trying to understand=1|like to understand=1|learn=.8|learning=.8|"
    "want to learn=1|teach me=1|new to=.8|i'm new=.8|beginner=.9|newbie=.9|noob=.8|"
    "tutorial=.4|walk me through=.7|intuition=.8|intuitively=.7|in simple terms=1|"
    "simple terms=.9|simply=.3|layman=1|layman terms=1|for dummies=1|what does * mean=.6|"
    "what does it mean=.6|what do * mean=.5|how does ... work=.45|how do ... work=.45|"
    "how * works=.45|why does=.2|why do=.15|the idea behind=.8|concept=.4|concepts=.4|"
    "difference between=.3|don't know what=.4|don't know how=.3|don't know anything=.8|"
    "not a programmer=1|not a developer=.9|not technical=.9|non technical=.9|"
    "not very technical=1|just started=.6|first time=.4|self taught=.5|study=.5|studying=.6|"
    "student=.5|homework=.4|exam=.4|course=.3|bootcamp=.4|curious=.8|wondering=.5|"
    "curious how=1|curious about=1|curious why=1|curious what=1|curious whether=1|"
    "explain this=.2|explain the output=.15|explain this error=.15|explain the error=.15|"
    "explain this code=.25|explain what this=.25|explain this regex=.2|explain this command=.2|"
    "fundamentals=.6|basics=.6|mental model=.8|analogy=.8|where do i start=.5|"
    "where to start=.4|get started with=.4"
)

# Phrases that look like other signals but are not: longest match lets them shadow a word.
# Each lexicon below is scanned on its own, so each has its own shadows.
_TONE_SHADOWS = (
    "i know=1|you know=1|let me know=1|i understand=1|we understand=1|good to know=1|"
    "no worries=1|no problem=1|not a problem=1|never mind=1|nevermind=1|happy hour=1|"
    "happy birthday=1|feel free=1|no rush=1|not urgent=1|quick question=1|stress test=1|"
    "stress testing=1|stress tests=1|happy path=1|sad path=1|kernel panic=1|panic at=1|"
    "go panic=1|rust panic=1|panic runtime=1|load test=1|critical section=1|critical path=1|"
    "help text=1|help message=1|help page=1|help flag=1|love bombing=1|process died=1|"
    "server died=1|container died=1|kernel died=1|pod died=1|worker died=1|job died=1|"
    "connection died=1|daemon died=1"
)
_POLICY_SHADOWS = (
    "bath bomb=1|photo bomb=1|da bomb=1|f bomb=1|glue gun=1|heat gun=1|nail gun=1|"
    "spray gun=1|gun metal=1|murder mystery=1|kill the process=1|kill process=1|kill all=1|"
    "kill it=1|kill the server=1|kill the job=1|kill switch=1|kill signal=1|poison pill=1|"
    "cache poisoning=1|bomb out=1|get around to=1"
)
_META_SHADOWS = (
    "user persona=1|user personas=1|buyer persona=1|buyer personas=1|marketing persona=1|"
    "aviva insurance=1|aviva stadium=1|westminster abbey=1|abbey road=1|downton abbey=1|"
    "abi compatibility=1|abi compatible=1|abi break=1|abi breaking=1|stable abi=1|"
    "abi stability=1|c abi=1|the abi=1|an abi=1|abi3=1|abi version=1|abi tag=1|"
    "abi change=1|abi changes=1|python abi=1|abi of=1|kernel abi=1|abi dump=1"
)

_DIRECT_SPEC = (
    "just give me=1|just the code=1|just the command=1|only the code=1|code only=1|"
    "no explanation=1|without explanation=.8|skip the explanation=1|no need to explain=1|"
    "don't explain=1|tl dr=.5|tldr=.5|one liner=.6|oneliner=.6|concise=.5|briefly=.3|"
    "short answer=.5|quick question=.4|exact command=.8|exact flags=.8|exact syntax=.8|"
    "which flag=.5|what flag=.5|in one line=.5"
)

_SOCIAL_SPECS: dict[str, str] = {
    "greeting": (
        "hi=1|hello=1|hey=1|heya=1|hiya=1|howdy=1|yo=.7|greetings=.8|good morning=1|"
        "good afternoon=1|good evening=1|good day=.8|morning=.4|what up=.9|sup=.8|wassup=.9|"
        "how are you=1|how are you doing=1|how it going=1|how you doing=1|how have you been=1|"
        "hola=1|bonjour=1|hallo=1|hey there=1|hi there=1|hello there=1|nice to meet you=1"
    ),
    "farewell": (
        "bye=1|goodbye=1|good night=1|goodnight=1|see you=.8|see ya=.9|cya=.9|talk later=.9|"
        "talk soon=.9|take care=.9|catch you later=1|gotta go=.9|got to go=.9|"
        "have a good one=1|have a nice day=1|have a great day=1|gn=.5"
    ),
    "thanks": (
        "thanks=1|thank you=1|thank u=1|thankyou=1|cheers=.7|appreciate it=1|"
        "much appreciated=1|appreciated=.6|many thanks=1|thanks a lot=1|good job=.9|"
        "nice job=.9|nice work=.9|well done=.9|great job=.9|you rock=1|you the best=1|"
        "great answer=.8|that helps=.7|that helped=.7|helpful=.5|kudos=.8"
    ),
    "ack": (
        "perfect=.5|cool=.5|nice=.5|ok=.5|got it=.7|makes sense=.7|sounds good=.7|alright=.5|"
        "sure=.3|lol=.6|haha=.6|hmm=.4"
    ),
    "personal": (
        "what do you think=.5|your favorite=.8|your favourite=.8|do you like=.7|"
        "tell me a joke=1|joke=.6|funny=.4|bored=.7|weekend=.6|vacation=.8|holiday=.6|"
        "birthday=.8|wedding=.8|family=.7|mom=.7|mum=.7|dad=.7|mother=.6|father=.6|sister=.6|"
        "brother=.6|wife=.5|husband=.5|girlfriend=.6|boyfriend=.6|partner=.3|kids=.6|son=.5|"
        "daughter=.6|baby=.5|dog=.6|cat=.5|pet=.5|friend=.5|friends=.5|movie=.6|movies=.6|"
        "film=.5|book=.4|books=.4|novel=.5|music=.5|song=.5|recipe=.8|cook=.5|cooking=.6|"
        "dinner=.6|lunch=.5|breakfast=.5|food=.5|coffee=.4|insomnia=.8|health=.5|doctor=.6|"
        "exercise=.6|workout=.6|gym=.6|weather=.7|life=.5|relationship=.7|breakup=.9|"
        "broke up=.9|divorce=.9|dating=.8|interview=.4|job interview=.6|career=.5|"
        "my manager=.4|my boss=.4|promotion=.5|salary=.5|meaning of life=1|philosophy=.6|"
        "poem=.7|poetry=.7|story=.4|hobby=.7|hobbies=.7|travel=.6|trip=.5|garden=.6|"
        "gardening=.7|plants=.4|motivation=.7|motivated=.6|procrastinate=.8|"
        "procrastinating=.8|procrastination=.8|feel=.3|feeling=.3|feelings=.7|advice=.4|"
        "imposter syndrome=1|impostor syndrome=1|westminster abbey=.8|abbey road=.8|"
        "downton abbey=.8|museum=.5|beautiful=.4|gift=.5|party=.5|football=.5|soccer=.5|"
        "address the issue=.3|address this issue=.3|address the problem=.3|"
        "address my concerns=.4|address the concerns=.3|address the feedback=.2|"
        "team=.2|coworkers=.4|meeting=.3|feel like=.2|how was your=.8|your day=.6|my day=.5"
    ),
}

_COMPLAINT_SPEC = (
    "sucks=.8|terrible=.7|useless=.8|awful=.7|horrible=.7|worst=.6|waste of time=.9|"
    "garbage=.6|trash=.5|ridiculous=.7|stupid=.6|dumb=.5|nightmare=.7|pain in the=.8|"
    "unusable=.8|hell=.4"
)

_SARCASM_SPEC = (
    "oh great=1|just great=1|oh perfect=1|just perfect=1|oh wonderful=1|oh fantastic=1|"
    "oh joy=1|oh goody=1|just what i needed=1|thanks for nothing=1|yeah right=1|"
    "love it when=.8|love how=.6|i just love=.7|gotta love=.9|got to love=.9|"
    "what a surprise=.8|surprise surprise=1|how wonderful=.8|how lovely=.8|great another=1|"
    "perfect another=1|thanks a lot=.5|wonderful another=1|fantastic another=1|brilliant another=1|"
    "nice another=.8|yay another=1|another day another=.5"
)
_POSITIVE_WORDS = frozenset(
    "great perfect wonderful fantastic brilliant lovely awesome amazing nice yay splendid".split()
)
_NEGATIVE_EVENT_SPEC = (
    "broke=1|broken=1|breaks=1|crash=1|crashed=1|crashes=1|crashing=1|error=1|errors=1|"
    "failed=1|fails=1|failing=1|failure=1|again=1|another=.6|deleted=1|deletes=1|lost=1|down=.6|"
    "corrupted=1|wiped=1|segfault=1|bug=1|bugs=1|outage=1|exception=1|timeout=1|"
    "not working=1|doesn't work=1|overwrote=1|regression=1|merge conflict=1|"
    "merge conflicts=1|on a friday=.6|at 3am=.6|at 2am=.6|in production=.6|ate my=1|"
    "breaking=1|broke my=1|ruined=1|ruins=1|messed up=1|wiped out=1"
)
_RESOLUTION_SPEC = (
    "fixed=1|solved=1|works now=1|it works=1|that worked=1|it worked=1|resolved=1|"
    "that did it=1|did the trick=1|works perfectly=1|working now=1|sorted it=1"
)

_DEBUG_SPEC = (
    "error=.6|errors=.6|bug=.7|bugs=.6|fix=.5|fixing=.5|doesn't work=.5|does not work=.5|"
    "not working=.5|isn't working=.5|won't work=.4|broken=.4|crash=.6|crashes=.6|crashed=.6|"
    "crashing=.6|fails=.5|failing=.5|failed=.5|failure=.4|exception=.9|traceback=1|"
    "stack trace=1|stacktrace=1|segfault=1|segmentation fault=1|core dumped=1|debug=.8|"
    "debugging=.8|throws=.6|throwing=.6|hangs=.5|hanging=.4|freezes=.4|returns none=.8|"
    "returns null=.8|returns undefined=.8|off by one=.8|memory leak=1|race condition=1|"
    "deadlock=1|wrong output=.6|unexpected=.3|warning=.4|exit code=.8|permission denied=.9|"
    "command not found=1|no module named=1|cannot find module=1|can't find module=1|"
    "timed out=.6|timeout=.6|undefined=.5|nan=.4|keeps returning=.6|panicked=.8|"
    "kernel panic=1|not defined=.7|is not defined=.8|unexpected token=1|syntax error=1"
)

_TECH_SPEC = (
    # languages and runtimes
    "python=1|python3=1|javascript=1|typescript=1|rust=.8|golang=1|in go=.6|go code=1|"
    "go module=1|go modules=1|goroutine=1|goroutines=1|go build=1|go test=1|go run=1|go mod=1|"
    "go get=.6|go program=1|go channel=1|go channels=1|java=.9|kotlin=1|scala=.8|ruby=.6|"
    "rails=.6|php=1|perl=.8|haskell=1|elixir=.8|clojure=1|lua=.8|julia=.5|swift=.5|"
    "swiftui=1|objective c=1|c code=1|in c=.5|cpp=1|cuda=1|wasm=1|webassembly=1|node=.5|"
    "node js=1|nodejs=1|deno=1|bun=.3|jvm=1|dotnet=1|csharp=1|"
    # python/js ecosystem
    "numpy=1|pandas=1|pytorch=1|torch=.7|tensorflow=1|keras=1|scikit=1|sklearn=1|scipy=1|"
    "matplotlib=1|django=1|flask=.9|fastapi=1|aiohttp=1|asyncio=1|requests library=1|"
    "pydantic=1|sqlalchemy=1|pytest=1|unittest=1|mypy=1|ruff=1|black formatter=1|"
    "pip=1|pipx=1|venv=1|virtualenv=1|conda=1|poetry=.6|uv=.4|npm=1|npx=1|yarn=.7|pnpm=1|"
    "webpack=1|vite=1|babel=.6|eslint=1|prettier=.5|react=.8|useeffect=1|usestate=1|"
    "vue=.8|angular=.8|svelte=1|nextjs=1|next js=1|jquery=1|textual=.6|tkinter=1|"
    "llama cpp=1|llama=.6|gguf=1|huggingface=1|hugging face=1|chromadb=1|ollama=1|"
    # concepts
    "code=.5|coding=.6|program=.4|programming=.8|script=.6|scripts=.6|function=.6|"
    "functions=.6|method=.4|methods=.4|class=.4|classes=.4|object=.3|objects=.3|"
    "variable=.7|variables=.7|constant=.3|pointer=.8|pointers=.8|reference=.3|array=.7|"
    "arrays=.7|list comprehension=1|dict=.9|dictionary=.4|hashmap=1|hash map=1|hash table=1|"
    "struct=.9|structs=.9|enum=.9|lambda=.7|closure=.7|closures=.7|decorator=.8|"
    "decorators=.8|generator=.5|iterator=.8|recursion=.9|recursive=.7|algorithm=.8|"
    "algorithms=.8|big o=1|time complexity=1|complexity=.4|data structure=1|"
    "data structures=1|linked list=1|binary tree=1|binary search=1|sorting=.5|"
    "regex=1|regular expression=1|regexp=1|string=.5|strings=.5|integer=.6|int=.6|float=.6|"
    "boolean=.8|bool=.8|bytes=.6|utf=.8|unicode=.8|encoding=.6|base64=1|json=1|yaml=1|yml=1|"
    "toml=1|xml=.9|csv=.7|html=.9|css=.9|dom=.8|markdown=.6|"
    "compile=.8|compiler=.9|compiling=.8|compilation=.8|runtime=.8|syntax=.8|type hints=1|"
    "type error=1|typeerror=1|keyerror=1|valueerror=1|importerror=1|attributeerror=1|"
    "indexerror=1|nullpointerexception=1|null pointer=1|nullptr=1|null=.5|none=.2|"
    "async=1|await=1|coroutine=1|coroutines=1|event loop=1|callback=.8|callbacks=.8|"
    "promise=.4|promises=.5|thread=.6|threads=.6|threading=1|multithreading=1|"
    "multiprocessing=1|concurrency=.9|parallelism=.8|mutex=1|semaphore=1|lock=.3|gil=1|"
    "heap=.6|stack=.4|stack overflow=.7|garbage collector=1|garbage collection=1|"
    "memory leak=1|refactor=.9|refactoring=.9|lint=.9|linter=1|unit test=1|unit tests=1|"
    "integration test=1|integration tests=1|test suite=1|tests=.4|test=.3|mock=.6|"
    "mocks=.6|fixture=.6|fixtures=.6|coverage=.4|benchmark=.7|benchmarks=.7|profiler=1|"
    "profiling=1|profile=.3|optimize=.5|optimise=.5|optimization=.5|latency=.8|"
    "throughput=.8|performance=.5|perf=.6|cache=.6|caching=.8|cache miss=1|memoization=1|"
    "api=1|apis=1|rest api=1|endpoint=.9|endpoints=.9|graphql=1|grpc=1|protobuf=1|"
    "websocket=1|websockets=1|sse=.8|http=1|https=1|http2=1|tcp=1|udp=1|dns=1|ssl=1|tls=1|"
    "ssh=1|ftp=.8|sftp=1|cors=1|oauth=1|jwt=1|cookie=.3|cookies=.3|session=.3|"
    "status code=1|url=.8|urls=.8|uri=.8|localhost=1|port=.5|ports=.5|ip address=.8|"
    "ip addresses=.8|ip address of=.6|ipv4=1|ipv6=1|mac address=1|email address=.3|"
    "memory address=1|address space=1|address bar=.6|subnet=1|firewall=.7|proxy=.7|"
    "reverse proxy=1|load balancer=1|vpn=.6|router=.5|routing table=1|bandwidth=.6|"
    "server=.5|servers=.5|client=.4|backend=.7|frontend=.7|database=.8|databases=.8|"
    "db=.7|sql=1|query=.6|queries=.6|schema=.8|migration=.6|migrations=.6|index=.4|"
    "indexes=.5|orm=1|postgres=1|postgresql=1|mysql=1|sqlite=1|sqlite3=1|mongodb=1|"
    "redis=1|elasticsearch=1|kafka=1|rabbitmq=1|nginx=1|apache=.6|"
    "docker=1|dockerfile=1|container=.7|containers=.7|kubernetes=1|k8s=1|kubectl=1|pod=.5|"
    "pods=.6|helm=.8|terraform=1|ansible=1|aws=1|gcp=1|azure=.8|s3=1|ec2=1|"
    "ci=.6|pipeline=.5|github actions=1|gitlab=1|jenkins=1|deploy=.6|deployment=.6|"
    "deploying=.6|git=1|github=.8|commit=.7|commits=.7|branch=.4|branches=.4|"
    "merge conflict=1|merge conflicts=1|rebase=1|pull request=1|repo=.8|repository=.7|"
    "stash=.6|cherry pick=1|"
    "linux=.9|ubuntu=.9|debian=.9|fedora=.8|arch linux=1|macos=.7|windows=.3|wsl=1|"
    "kernel=.7|driver=.5|drivers=.5|bash=1|zsh=1|shell=.5|powershell=1|terminal=.7|cli=.8|"
    "command line=.8|command=.4|commands=.4|cron=1|crontab=1|systemd=1|systemctl=1|"
    "environment variable=1|environment variables=1|env var=1|env vars=1|path variable=1|"
    "config=.7|configuration=.6|configure=.5|dotfiles=1|permissions=.5|chmod=1|chown=1|"
    "sudo=1|ls=1|grep=1|sed=1|awk=1|curl=1|wget=1|rsync=1|tar=.6|tmux=1|vim=1|neovim=1|"
    "emacs=.8|vscode=1|vs code=1|ide=.8|"
    "cpu=1|gpu=1|gpus=1|vram=1|ram=.8|ssd=.8|nvme=1|cores=.5|memory=.4|disk=.5|"
    "nvidia smi=1|nvidia=.5|tensor=.9|tensors=.9|model=.3|models=.3|llm=1|llms=1|"
    "inference=.8|quantization=1|quantize=1|quantized=1|embedding=.8|embeddings=.8|"
    "tokenizer=1|tokens=.5|token=.4|context window=1|context length=1|batch size=1|"
    "kv cache=1|fine tune=.8|fine tuning=.8|transformer=.7|attention=.3|"
    "install=.4|installed=.4|installing=.4|package=.4|packages=.4|library=.4|"
    "libraries=.4|dependency=.7|dependencies=.7|framework=.5|sdk=.9|version=.3|upgrade=.3|"
    "binary=.5|executable=.7|process=.4|processes=.4|pid=1|daemon=.7|socket=.9|sockets=.9|"
    "kill the process=1|kill process=1|file descriptor=1|stdout=1|stderr=1|stdin=1|"
    "abi compatibility=1|abi compatible=1|abi break=1|abi breaking=1|stable abi=1|"
    "abi stability=1|c abi=1|the abi=.8|an abi=.8|abi3=1|abi version=1|abi tag=1|"
    "binary interface=1|happy path=.6|div=.8|flexbox=1|center a div=1|tailwind=1|"
    "jsx=1|tsx=1|props=.6|component=.5|components=.5|selector=.5|padding=.4|margin=.2|"
    "list=.3|lists=.3|tuple=.8|tuples=.8|sort=.3|sorted=.3|search=.2|hash=.5|hashing=.6|"
    "cargo=1|rustc=1|crate=.7|crates=.7|linker=1|borrow checker=1|borrow check=1|"
    "wifi=.7|wi fi=.7|connection=.3|network=.5|"
    "internet=.4|ethernet=.8|bluetooth=.6|virus=.4|malware=.5|antivirus=.8|spam filter=.6|"
    "stress test=.8|stress testing=.8|load test=.8|"
    "fork bomb=.5|bug report=.6|pr=.6|prs=.6|code review=1|reviewer=.4|readme=.8|docs=.5|documentation=.5|folder=.2|folders=.2|directory=.4|directories=.4|"
    "file=.2|files=.2|software=.5|hardware=.5|computer=.3|laptop=.3|"
    "app=.3|website=.3|browser=.4|firmware=.7|bios=.8|overclock=.8|raspberry pi=1|arduino=1"
)

# Policy lexicons (what makes a message Abi's): nouns, verbs and targets combine in rules below.
_POLICY_SPECS: dict[str, str] = {
    "malware": (
        "malware=1|ransomware=1|keylogger=1|key logger=1|keyloggers=1|virus=.7|viruses=.7|"
        "computer virus=1|trojan=.9|worm=.4|botnet=1|rootkit=1|spyware=1|stalkerware=1|"
        "backdoor=.8|reverse shell=.7|cryptojacker=1|credential stealer=1|password stealer=1|"
        "infostealer=1|password grabber=1|token grabber=1|info stealer=1|zero day exploit=.9|0day=.8|an exploit=.7|"
        "exploit code=.8|exploit for=.7|working exploit=.9|ddos=.8|ddos attack=1|"
        "dos attack=.7|phishing=.8|phishing page=1|phishing email=1|phishing site=1|"
        "logic bomb=1|zip bomb=.8|self replicating=.8|self propagating=.8"
    ),
    "malware_strong": (
        "steal passwords=1|steal credentials=1|steal cookies=1|steal session=1|"
        "steal someone password=1|steal their passwords=1|steal bank details=1|"
        "steal credit card=1|steal credit cards=1|bypass antivirus=1|evade antivirus=1|"
        "evade detection=1|evades detection=1|undetectable by antivirus=1|"
        "undetectable malware=1|undetectable keylogger=1|spread malware=1|launch a ddos=1|"
        "ddos a website=1|ddos my=1|ddos their=1|hack into ... account=1|hack into my ex=1|"
        "hack my ex=1|hack someone=1|hack into someone=1|break into someone=1|"
        "encrypts all files and demands=1|ransom note=1|take down ... website=.6"
    ),
    "steal": "steal=1|steals=1|stealing=1|stole=1|exfiltrate=1|exfiltrates=1|exfiltrating=1",
    "stolen_goods": (
        "password=1|passwords=1|credentials=1|cookies=1|session cookies=1|tokens=.8|"
        "credit card=1|credit cards=1|bank details=1|wallet=1|crypto wallet=1|seed phrase=1|"
        "accounts=.8|account=.8|data=.6|identity=1|personal data=1|files=.6"
    ),
    "harvest": (
        "harvest=1|harvests=1|harvesting=1|scrape=1|scrapes=1|scraping=1|scraper=1|leak=1|"
        "leaks=1|leaking=1|sell=1|sells=1|selling=1|expose=1|exposes=1|exposing=1|publish=1|"
        "publishes=1|dump=.8|dumps=.8"
    ),
    "create": (
        "write=1|writing=1|create=1|creating=1|build=1|building=1|make=1|making=1|code=.6|"
        "develop=1|generate=1|program=.6|craft=1|design=.6|give me=.8|implement=1|deploy=1|"
        "spread=1|distribute=1|launch=1|infect=1|assemble=1|synthesize=1|manufacture=1|"
        "3d print=1|print=.4|buy=.6|obtain=.8|get=.4|acquire=.8"
    ),
    "defense": (
        "remove=1|removal=1|detect=1|detecting=1|detection=1|protect=1|protection=1|"
        "prevent=1|prevention=1|avoid=1|avoiding=1|stop=.6|defend=1|defense=1|defence=1|infected=1|got a=.6|scan=1|"
        "scanner=1|scanning=1|scans=1|clean=.8|cleanup=.8|analyze=.6|analyse=.6|mitigate=1|"
        "mitigation=1|block=.6|antivirus=1|anti virus=1|got hacked=1|been hacked=1|recover=.8|"
        "secure=.6|harden=1|patch=.6|report=.5|identify=.6|signs of=1"
    ),
    "weapon": (
        "bomb=.8|bombs=.8|explosive=.9|explosives=.9|explosive device=1.2|ied=1|grenade=.9|"
        "gun=.7|guns=.7|firearm=.9|firearms=.9|rifle=.7|silencer=.8|suppressor=.6|"
        "ghost gun=1.2|untraceable gun=1.2|3d printed gun=1.2|nerve agent=1.2|sarin=1.2|"
        "ricin=1.2|anthrax=1|vx gas=1.2|mustard gas=1.2|bioweapon=1.2|biological weapon=1.2|"
        "chemical weapon=1.2|dirty bomb=1.2|napalm=1|thermite=.8|molotov=1.2|"
        "molotov cocktail=1.2|weapon=.7|weapons=.7|poison=.6|landmine=1|detonator=1|"
        "pipe bomb=1.2|make a bomb=1.2|build a bomb=1.2|make explosives=1.2|"
        "make an explosive=1.2"
    ),
    "fiction": (
        "game=1|games=1|unity=1|unreal=1|godot=1|sprite=1|player=.6|npc=1|minecraft=1|"
        "roblox=1|inventory=.6|rpg=1|fps game=1|level design=1|fiction=.5|"
        "history of=.6|world war=.8|museum=.6"
    ),
    "harm": (
        "kill someone=1|kill somebody=1|kill people=1|kill a person=1|kill him=1|kill her=1|"
        "kill my boss=1|kill my wife=1|kill my husband=1|kill my neighbor=1|"
        "kill my neighbour=1|kill my ex=1|kill my roommate=1|kill my family=1|"
        "kill my coworker=1|murder=1|murder someone=1|hurt someone=1|hurt somebody=1|"
        "hurt people=1|poison someone=1|poison my=1|poison him=1|poison her=1|stab=1|"
        "shoot someone=1|shoot up=1|shoot my=1|attack someone=1|beat up=.8|strangle=1"
    ),
    "destructive": (
        "sabotage=1|brick their=1|brick his=1|brick her=1|brick someone=1|wipe their=.9|"
        "wipe his=.9|wipe her=.9|wipe someone=.9|delete their=.6|destroy their=.8|"
        "destroy ... company=.9|get back at=.6|revenge=.6|former employer=.5|"
        "ex employer=.5|old employer=.4|without them knowing=.6|without anyone knowing=.6|"
        "without anyone noticing=.6|can't be recovered=.4|cannot be recovered=.4|"
        "so they can't recover=.9|unrecoverable=.3|delete all backups=.5|"
        "delete the backups=.5|wipe all=.4|wipe the servers=.6|wipe the database=.5|"
        "wipe production=.7|delete system32=1.2|fork bomb=1.2"
    ),
    "pii_noun": (
        "home address=1|home addresses=1|address of=.5|where ... lives=.9|where ... live=.6|"
        "phone number=.6|phone numbers=.6|cell number=.6|mobile number=.6|"
        "social security number=1|social security=.9|ssn=1|credit card number=.8|"
        "credit card numbers=.8|credit card details=.8|bank details=.7|bank account=.5|"
        "medical records=.8|personal data=.6|personal information=.6|personal info=.6|"
        "private information=.7|private photos=.8|nudes=1|real name=.6|real identity=.7|"
        "identity of=.5|email address=.4|email addresses=.4|emails=.3|location=.4|"
        "current location=.6|license plate=.6|date of birth=.6|password=.3|passwords=.3|"
        "ip address of=.4|messages=.3|texts=.3|whereabouts=.8|profiles=.4|profile=.3"
    ),
    "pii_verb": (
        "find=.4|finding=.4|track=.5|tracking=.5|locate=.5|look up=.4|lookup=.4|dox=1.5|"
        "doxx=1.5|doxxing=1.5|doxing=1.5|reveal=.5|stalk=1.5|stalking=1.5|spy on=1.5|dig up=.6|uncover=.5|unmask=.8|get=.2|"
        "obtain=.4|post=.3|share=.3|access=.3|hack into=.8|read=.3|monitor=.3"
    ),
    "pii_target": (
        "someone=.5|somebody=.5|a person=.4|this person=.6|that person=.6|my ex=1|ex=.6|"
        "ex girlfriend=1|ex boyfriend=1|ex wife=1|ex husband=1|girlfriend=.6|boyfriend=.6|"
        "wife=.5|husband=.5|coworker=.6|co worker=.6|colleague=.6|neighbor=.6|neighbour=.6|"
        "stranger=.7|celebrity=.7|this guy=.6|this girl=.7|this woman=.7|this man=.6|"
        "a girl=.5|a guy=.4|her=.5|his=.4|him=.4|anonymous account=.8|twitter user=.6|"
        "reddit user=.6|the guy=.5|that guy=.6|the girl=.6|that girl=.6|the woman=.6|"
        "the man=.5|people=.3|random people=.6|users=.2|my boss=.5|classmate=.6|"
        "roommate=.5|journalist=.6|politician=.5|streamer=.6"
    ),
    "bypass": (
        "disable=1|turn off=1|switch off=1|bypass=1|circumvent=1|get around=1|ignore=1|"
        "override=1|remove=.8|deactivate=1|forget=.8|drop=.6|lift=.6|break=.5|unlock=.8|"
        "skip=.6|evade=1|without=.5"
    ),
    "safety_object": (
        "safety=.6|safety filter=1|safety filters=1|content filter=1|content filters=1|"
        "filter=.4|filters=.4|guardrails=1|guard rails=1|restrictions=.5|rules=.3|"
        "guidelines=.4|content policy=.9|policy=.3|policies=.3|moderation=.8|censorship=.8|"
        "alignment=.6|instructions=.3|system prompt=1|previous instructions=1|"
        "prior instructions=1|all instructions=.8|ethical guidelines=1|ethics=.5|"
        "safeguards=.9|safety rules=1|safety guidelines=1|safety measures=.8|limitations=.4"
    ),
    "jailbreak": (
        "jailbreak you=1|jailbreak yourself=1|jailbreak prompt=1|jailbreak mode=1|"
        "jailbreak this ai=1|jailbreak the ai=1|jailbreak chatgpt=1|jailbreak the model=1|"
        "jailbreak this model=1|jailbreak abi=1|dan mode=1|do anything now=1|"
        "ignore all previous instructions=1|ignore previous instructions=1|"
        "ignore your instructions=1|ignore your rules=1|ignore your guidelines=1|"
        "pretend you have no=1|act as if you have no=1|you have no restrictions=1|"
        "you are now unrestricted=1|unrestricted mode=1|god mode=.6"
    ),
    "unrestricted": (
        "no restrictions=1|without restrictions=1|without any restrictions=1|unfiltered=1|"
        "uncensored=1|no rules=1|no filter=1|no filters=1|no guardrails=1|no limits=.8|"
        "no ethics=1|no morals=1|unrestricted=1|answer freely=1|speak freely=1|"
        "without censorship=1|no censorship=1|anything i ask=.5"
    ),
    "roleplay": (
        "pretend=1|pretend you=1|act as=1|you are now=1|from now on=1|roleplay as=1|"
        "role play as=1|simulate=.6|be an=.5|become=.5"
    ),
    "self": "your=1|yourself=1|you're=1|you=.3",
}

_META_SPEC = (
    "abi=1|abbey=1|aviva=1|persona=1|personas=1|which persona=1|what persona=1|"
    "your routing=1|routing decision=1|how do you route=1|why did you route=1|"
    "why was i routed=1|why was this routed=1|routed me=1|route me to=1|route this to=1|"
    "routed my=1|your router=1|the persona router=1|your safety=1|your rules=1|"
    "your guidelines=1|your policy=1|your policies=1|your content policy=1|"
    "your moderation=1|your guardrails=1|your restrictions=1|your filters=1|"
    "your limitations=1|why did you refuse=1|you refused=1|you refuse=1|will you refuse=1|"
    "would you refuse=1|what can't you=1|what won't you=1|are you allowed=1|"
    "what are you allowed=1|are you safe=1|safe with you=1|do you store=1|do you log=1|"
    "do you share my=1|what do you do with my=1|my data safe=1|who are you=1|"
    "how do you work=.8|how do you decide=1|how did you decide=1|who decides=1|"
    "why did you choose=1|why did you pick=1|why did you answer=1|why are you answering=1|"
    "moderator=1|moderation policy=1|safety policy=1|your safety policy=1"
)

_CODE_NOUN_SPEC = (
    "function=1|functions=1|script=1|scripts=1|class=1|method=1|program=1|code=1|snippet=1|"
    "query=1|regex=1|test=.8|tests=.8|unit test=1|endpoint=1|cli=1|module=1|component=1|"
    "decorator=1|parser=1|dockerfile=1|makefile=1|config=1|one liner=1|oneliner=1|"
    "command=1|algorithm=1|app=.6|bot=.6|macro=1|hook=.8|plugin=1|extension=.8|migration=1|"
    "schema=1|loop=1|implementation=1|api=1|server=.8|bash=1|sql=1|html=1|css=1|"
    "pipeline=.8|workflow=.6|struct=1|interface=.8|type=.5|types=.5|wrapper=1|benchmark=1"
)
_CODE_VERB_SPEC = (
    "write=1|implement=1|generate=1|create=.8|build=.8|refactor=1|convert=1|port this=1|port it=1|"
    "rewrite=1|optimize=1|optimise=1|make=.6|add=.7|give me=.8|show me=.7|translate=.8|"
    "parse=.8|sort=.6|reverse=.6|deploy=.8|configure=.8|set up=.8|setup=.7|install=.8|"
    "update=.6|upgrade=.6|migrate=.8|debug=.8|profile=.6|benchmark=.6|fix=.8|speed up=.8|"
    "need=.4|how do i=.6|how can i=.6|how to=.5|how would i=.6|best way to=.6|"
    "is there a way to=.6"
)

NEGATORS = frozenset(
    "not no never don't doesn't didn't isn't aren't wasn't weren't won't can't couldn't "
    "shouldn't wouldn't haven't hasn't hadn't without hardly barely nor neither ain't".split()
)
# Words that end a negator's reach, like punctuation does.
_BREAKERS = frozenset("and but because cause since though although however yet while which".split())
_INTENSIFIERS = frozenset(
    "so really very extremely totally completely super incredibly absolutely utterly "
    "seriously insanely beyond too deeply".split()
)
_ALIASES = {
    "im": "i'm", "dont": "don't", "doesnt": "doesn't", "didnt": "didn't", "isnt": "isn't",
    "cant": "can't", "cannot": "can't", "arent": "aren't", "wasnt": "wasn't",
    "havent": "haven't", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't",
    "ive": "i've", "whats": "what", "thats": "that", "u": "you", "ur": "your", "youre": "you're",
    "pls": "please", "plz": "please", "thx": "thanks", "thanx": "thanks", "ty": "thanks",
    "tysm": "thanks", "okay": "ok", "k": "ok", "soo": "so", "hii": "hi", "heyy": "hey",
    "ughh": "ugh", "arghh": "argh", "yayy": "yay", "noo": "no", "helpp": "help",
    "thankss": "thanks", "hellooo": "hello", "helloo": "hello", "grrr": "grr", "gr": "grr",
}

# Shell commands: unambiguous ones make a message a command on their own; the ones that are
# also English words ("find", "make", "touch") need a flag, path or file name next to them.
_COMMANDS = frozenset(
    "pwd ls cd grep egrep rg sed awk cat git docker kubectl pip pip3 npm npx yarn pnpm curl wget "
    "ssh scp rsync chmod chown sudo tar gcc clang cmake python python3 apt apt-get brew "
    "systemctl journalctl ps htop pkill df du xargs tail vim nano nvim mkdir rmdir rm cp mv "
    "ping netstat lsof nvidia-smi ffmpeg conda cargo rustc node deno mvn gradle terraform "
    "ansible helm psql mysql sqlite3 uv poetry ruff pytest mypy go javac java ln chgrp "
    "tmux screen jq zip unzip gzip openssl dig nslookup traceroute ifconfig ip iptables ufw "
    "crontab mount umount dd mkfs fdisk lsblk free uname whoami export alias".split()
)
_AMBIGUOUS_COMMANDS = frozenset("find make touch echo source head top kill less date which man".split())

# Raw-text structure that only code has (case matters for the last two). Every pattern here
# and below runs in linear time: starts are anchored with look-behinds and repeats are
# possessive, so hostile input ("a.a.a.a...") cannot make routing slow.
_STRUCTURE: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("code block", re.compile(r"```"), 1.5),
    ("inline code", re.compile(r"`[^`\n]+`"), 0.6),
    ("a call", re.compile(r"(?<![\w.])[A-Za-z_][\w.]*+\([^()\n]{0,80}\)"), 0.5),
    ("a file name", re.compile(
        r"(?<=\w)\.(?:py|pyi|js|mjs|ts|tsx|jsx|rs|go|c|cc|cpp|h|hpp|java|kt|rb|php|sh|bash|"
        r"zsh|ps1|json|ya?ml|toml|ini|cfg|conf|sql|html|css|scss|lock|gguf|csv|log|xml|env|"
        r"ipynb|so|dll|exe|whl)\b"), 0.6),
    ("a path", re.compile(r"(?:^|\s)(?:~|\.{1,2})?/[\w.-]++(?:/[\w.*-]*+)*+"), 0.5),
    ("a flag", re.compile(r"(?:^|\s)--?[A-Za-z][\w-]*"), 0.4),
    ("an operator", re.compile(r"==|!=|<=|>=|=>|->|::|&&|\|\||\+=|:=|\$\(|\$\{"), 0.4),
    ("a snake_case name", re.compile(r"(?<!\w)[a-z][a-z0-9]*+_[a-z0-9_]*+(?!\w)"), 0.5),
    ("a dunder name", re.compile(r"(?<!\w)__[A-Za-z0-9]\w*?__(?!\w)"), 0.8),
    ("a hex number", re.compile(r"\b0x[0-9a-fA-F]+\b"), 0.4),
    ("a version number", re.compile(r"\bv?\d+\.\d+\.\d+\b"), 0.3),
    ("a size or time unit", re.compile(
        r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|ns|gb|mb|kb|gib|mib|tb|ghz|mhz|fps|rps|qps|tok/s)\b",
        re.I), 0.4),
    ("a camelCase name", re.compile(r"(?<![\w])[a-z]{2,}+[A-Z][A-Za-z0-9]*+(?!\w)"), 0.5),
    ("an exception name", re.compile(r"(?<![\w])[A-Z][A-Za-z0-9]{0,60}?(?:Error|Exception)(?!\w)"), 0.8),
    ("a C-family language", re.compile(r"(?<![\w+#])(?:c\+\+|c#|f#|\.net)(?![\w+#])", re.I), 1.0),
)

# Commands that destroy a system whatever the context: these alone make a message Abi's.
_DESTRUCTIVE_RE: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The flags group is checked for a recursive flag in code (see _destructive).
    ("rm -rf on a system path", re.compile(
        r"\brm((?:\s++-[\w-]*+)++)\s++[\"']?(?:/\*?|~/?\*?|\$home/?\*?|"
        r"/(?:home|etc|usr|var|boot|bin|sbin|lib|lib64|root|opt|srv|dev|sys|proc)/?\*?)"
        r"[\"']?(?=$|[\s;&|`)])", re.I)),
    ("a fork bomb", re.compile(r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:")),
    ("mkfs on a device", re.compile(r"\bmkfs(?:\.\w+)?\s++(?:-\S++\s++)*+/dev/", re.I)),
    ("dd onto a disk", re.compile(r"\bdd\s[^\n]{0,200}?\bof=/dev/(?:sd|hd|nvme|xvd|vd|disk|mmcblk)", re.I)),
    ("overwriting a disk", re.compile(r">\s*/dev/(?:sd[a-z]|nvme\d|hd[a-z]|disk\d)", re.I)),
    ("shred on a disk", re.compile(r"\bshred\s[^\n]{0,200}?/dev/(?:sd|nvme|hd|disk)", re.I)),
    ("chmod 777 on /", re.compile(r"\bchmod\s+-R\s+[0-7]{3,4}\s+/(?=$|\s)", re.I)),
    ("chown on /", re.compile(r"\bchown\s++-R\s++\S++\s++/(?=$|\s)", re.I)),
    ("formatting C:", re.compile(r"\bformat\s+c:", re.I)),
    ("deleting Windows system files", re.compile(
        r"\b(?:del|rd|rmdir|remove-item)\s[^\n]{0,200}?(?:c:\\windows|system32)", re.I)),
)

_WORD_RE = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[.,;:!?()\[\]{}\n\"]")
_REPEAT_RE = re.compile(r"([a-z])\1{2,}")
_CAPS_RE = re.compile(r"\b[A-Z]{3,}\b")


# --------------------------------------------------------------------------------------------
# Lexicon: an index from first word to entries, longest-first.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tag:
    category: str
    label: str
    weight: float


@dataclass(frozen=True, slots=True)
class Hit:
    """One lexicon match: the words at [start, end) carry `tag`."""

    category: str
    label: str
    weight: float
    start: int
    end: int
    text: str
    negated: bool = False


class Lexicon:
    def __init__(self) -> None:
        self._tags: dict[tuple[str, ...], list[Tag]] = {}
        self._index: dict[str, tuple[list[tuple[list[str], list[Tag]]],
                                     list[tuple[tuple[str, ...], list[Tag]]]]] = {}

    def add(self, category: str, label: str, spec: str) -> None:
        for item in spec.split("|"):
            phrase, _, weight = item.strip().rpartition("=")
            words = tuple(_normalise_words(phrase))
            if not words or words[0] in ("*", "..."):
                raise ValueError(f"bad lexicon entry {item!r}")
            self._tags.setdefault(words, []).append(Tag(category, label, float(weight)))

    def build(self) -> Lexicon:
        # Per first word: plain phrases longest-first (the first that matches is the longest),
        # then phrases with wildcards, which need the slower matcher.
        index: dict[str, tuple[list[tuple[list[str], list[Tag]]],
                               list[tuple[tuple[str, ...], list[Tag]]]]] = {}
        for words, tags in self._tags.items():
            plain, wild = index.setdefault(words[0], ([], []))
            if "*" in words or "..." in words:
                wild.append((words, tags))
            else:
                plain.append((list(words), tags))
        for plain, _ in index.values():
            plain.sort(key=lambda e: -len(e[0]))
        self._index = index
        return self

    def scan(self, words: list[str]) -> tuple[list[tuple[int, int, list[Tag]]], list[int]]:
        """Leftmost-longest matches, and for each word the index of the match covering it."""
        matches: list[tuple[int, int, list[Tag]]] = []
        covered = [-1] * len(words)
        i, n = 0, len(words)
        index = self._index
        while i < n:
            entry = index.get(words[i])
            if entry is None:
                i += 1
                continue
            best_end, best_tags = -1, None
            for pattern, tags in entry[0]:
                end = i + len(pattern)
                if words[i:end] == pattern:
                    best_end, best_tags = end, tags
                    break
            for wild_pattern, tags in entry[1]:
                found = _match(words, i, wild_pattern, 0)
                if found is not None and found > best_end:
                    best_end, best_tags = found, tags
            if best_tags is None:
                i += 1
                continue
            for k in range(i, best_end):
                covered[k] = len(matches)
            matches.append((i, best_end, best_tags))
            i = best_end
        return matches, covered


def _match(words: list[str], i: int, pattern: tuple[str, ...], k: int) -> int | None:
    if k == len(pattern):
        return i
    part = pattern[k]
    if part == "...":
        for gap in range(4):
            if i + gap > len(words):
                break
            end = _match(words, i + gap, pattern, k + 1)
            if end is not None:
                return end
        return None
    if i >= len(words) or (part != "*" and words[i] != part):
        return None
    return _match(words, i + 1, pattern, k + 1)


def _normalise_words(text: str) -> list[str]:
    return [w for w, _ in _tokens(text)]


def _tokens(text: str) -> list[tuple[str, int]]:
    """(word, clause number) pairs; punctuation and conjunctions start a new clause."""
    text = _REPEAT_RE.sub(r"\1\1", text.lower().replace("\u2019", "'").replace("\u2018", "'"))
    out: list[tuple[str, int]] = []
    clause = 0
    for raw in _WORD_RE.findall(text):
        if not (raw[0].isalnum() or raw[0] == "_"):
            clause += 1
            continue
        if raw.endswith("'s"):
            raw = raw[:-2]
        word = _ALIASES.get(raw, raw)
        if word in _BREAKERS:
            clause += 1
        out.append((word, clause))
    return out


def _build_lexicons() -> dict[str, Lexicon]:
    """Four lexicons scanned separately, so a phrase in one never hides a word from another."""
    tone, topic, policy, meta = Lexicon(), Lexicon(), Lexicon(), Lexicon()
    for label, spec in _EMOTION_SPECS.items():
        tone.add("emotion", label, spec)
    tone.add("urgency", "urgency", _URGENCY_SPEC)
    tone.add("learning", "learning", _LEARNING_SPEC)
    tone.add("direct", "direct", _DIRECT_SPEC)
    for label, spec in _SOCIAL_SPECS.items():
        tone.add("social", label, spec)
    tone.add("complaint", "complaint", _COMPLAINT_SPEC)
    tone.add("sarcasm", "sarcasm", _SARCASM_SPEC)
    tone.add("neutral", "neutral", _TONE_SHADOWS)

    topic.add("tech", "tech", _TECH_SPEC)
    topic.add("tech", "tech", _DEBUG_SPEC)
    topic.add("debugging", "debugging", _DEBUG_SPEC)
    topic.add("code_noun", "code_noun", _CODE_NOUN_SPEC)
    topic.add("code_verb", "code_verb", _CODE_VERB_SPEC)
    topic.add("negative_event", "negative_event", _NEGATIVE_EVENT_SPEC)
    topic.add("resolution", "resolution", _RESOLUTION_SPEC)

    for label, spec in _POLICY_SPECS.items():
        policy.add("policy", label, spec)
    policy.add("neutral", "neutral", _POLICY_SHADOWS)

    meta.add("meta", "meta", _META_SPEC)
    meta.add("neutral", "neutral", _META_SHADOWS)
    return {"tone": tone.build(), "topic": topic.build(), "policy": policy.build(),
            "meta": meta.build()}


LEXICONS = _build_lexicons()


# --------------------------------------------------------------------------------------------
# Analysis result.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyFlag:
    """Why a message is a policy violation: the category and the words that decided."""

    category: str
    evidence: tuple[str, ...]

    def describe(self) -> str:
        names = {
            "destructive_command": "a destructive command",
            "malware": "malware",
            "weapons": "weapons",
            "violence": "violence against people",
            "personal_data": "exposing someone's personal data",
            "disable_safety": "a request to disable safety",
        }
        return names.get(self.category, self.category)


@dataclass
class Signals:
    """Everything the router reads from one message; `to_dict()` is what the API shows."""

    words: list[str]
    hits: list[Hit]
    emotions: dict[str, float] = field(default_factory=dict)
    negated: list[str] = field(default_factory=list)
    urgency: float = 0.0
    technical: float = 0.0
    intents: dict[str, float] = field(default_factory=dict)
    learning: float = 0.0
    personal: float = 0.0
    policy: PolicyFlag | None = None
    meta: bool = False
    sarcasm: bool = False
    evidence: dict[str, list[str]] = field(default_factory=dict)

    @property
    def distress(self) -> tuple[str | None, float]:
        """The strongest distress emotion and its intensity."""
        best: tuple[str | None, float] = (None, 0.0)
        for label in DISTRESS:
            value = self.emotions.get(label, 0.0)
            if value > best[1]:
                best = (label, value)
        return best

    @property
    def tone(self) -> str:
        """distressed, confused, curious, upbeat or neutral: Abbey adapts her temperature."""
        label, value = self.distress
        if value >= 0.4:
            return "confused" if label in ("confused", "overwhelmed") else "distressed"
        if self.learning >= 0.4 or self.emotions.get("curious", 0) >= 0.4:
            return "curious"
        social = max(self.intents.get(k, 0.0) for k in ("greeting", "farewell", "thanks", "ack"))
        if max(self.emotions.get("happy", 0), self.emotions.get("excited", 0), social) >= 0.4:
            return "upbeat"
        return "neutral"

    def to_dict(self) -> dict[str, Any]:
        return {
            "emotions": {k: round(v, 3) for k, v in self.emotions.items()},
            "negated": list(self.negated),
            "urgency": round(self.urgency, 3),
            "technical": round(self.technical, 3),
            "intents": {k: round(v, 3) for k, v in self.intents.items()},
            "learning": round(self.learning, 3),
            "personal": round(self.personal, 3),
            "sarcasm": self.sarcasm,
            "meta": self.meta,
            "policy": (
                {"category": self.policy.category, "evidence": list(self.policy.evidence)}
                if self.policy else None
            ),
            "tone": self.tone,
            "evidence": {k: list(v) for k, v in self.evidence.items()},
        }


def _saturate(total: float) -> float:
    """Map a sum of weights to [0, 1): one strong term ~0.6, two ~0.85, three ~0.95."""
    return 1.0 - math.exp(-max(total, 0.0))


def _uniq(items: Iterable[str], limit: int = 4) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item.lower() not in (s.lower() for s in seen):
            seen.append(item)
        if len(seen) == limit:
            break
    return seen


def _clip(text: str) -> str:
    if len(text) <= MAX_HEAD_CHARS + MAX_TAIL_CHARS:
        return text
    return text[:MAX_HEAD_CHARS] + "\n" + text[-MAX_TAIL_CHARS:]


_NEGATABLE = frozenset({"emotion", "urgency", "learning"})


def analyze(text: str) -> Signals:
    """Read the signals of one message. Never raises on any str."""
    text = _clip(text)
    tokens = _tokens(text)
    words = [w for w, _ in tokens]
    clauses = [c for _, c in tokens]
    hits: list[Hit] = []
    for lexicon in LEXICONS.values():
        matches, cover = lexicon.scan(words)
        # The negation look-back ends at an emotion/urgency/learning phrase and at a negator
        # that belongs to a phrase ("no worries" negates nothing).
        blocks = [False] * len(words)
        for index, (start, end, tags) in enumerate(matches):
            negatable = any(t.category in _NEGATABLE for t in tags)
            for k in range(start, end):
                blocks[k] = negatable
                if not negatable and cover[k] == index and words[k] in NEGATORS:
                    blocks[k] = True
        for start, end, tags in matches:
            phrase = " ".join(words[start:end])
            negated = intense = False
            if any(t.category in _NEGATABLE for t in tags):
                negated = _is_negated(words, clauses, blocks, start)
                intense = any(
                    words[j] in _INTENSIFIERS and clauses[j] == clauses[start]
                    for j in range(max(0, start - 2), start)
                )
            for tag in tags:
                weight = tag.weight * (1.3 if intense and tag.category == "emotion" else 1.0)
                hits.append(Hit(tag.category, tag.label, weight, start, end, phrase,
                                negated and tag.category in _NEGATABLE))

    sig = Signals(words=words, hits=hits)
    ev = sig.evidence
    by_cat: dict[str, list[Hit]] = {}
    for hit in hits:
        by_cat.setdefault(hit.category, []).append(hit)

    # Emotions: sum per label; a negated positive emotion reads as disappointment.
    totals: dict[str, float] = {}
    emotion_words: dict[str, list[str]] = {}
    for hit in by_cat.get("emotion", ()):
        if hit.negated:
            sig.negated.append(f"not {hit.text}")
            if hit.label in ("happy", "excited"):
                totals["disappointed"] = totals.get("disappointed", 0.0) + 0.6 * hit.weight
                emotion_words.setdefault("disappointed", []).append(f"not {hit.text}")
            continue
        totals[hit.label] = totals.get(hit.label, 0.0) + hit.weight
        emotion_words.setdefault(hit.label, []).append(hit.text)

    complaint = sum(h.weight for h in by_cat.get("complaint", ()))
    if complaint:
        totals["frustrated"] = totals.get("frustrated", 0.0) + 0.6 * complaint
        emotion_words.setdefault("frustrated", []).extend(h.text for h in by_cat["complaint"])

    sarcasm = _sarcasm(words, clauses, by_cat)
    if sarcasm:
        sig.sarcasm = True
        totals["frustrated"] = totals.get("frustrated", 0.0) + 0.8
        emotion_words.setdefault("frustrated", []).append(f"sarcasm: {sarcasm}")

    exclaims = text.count("!")
    caps = [w for w in _CAPS_RE.findall(text) if not _is_tech_word(w.lower())]
    shouting = len(caps) >= 2 and len(caps) * 2 >= max(1, len(words) // 2)
    if shouting:
        totals["frustrated"] = totals.get("frustrated", 0.0) + 0.5
        emotion_words.setdefault("frustrated", []).append("shouting")
    for label, total in totals.items():
        boost = 0.1 if exclaims >= 2 else 0.0
        sig.emotions[label] = min(1.0, total + boost)
    for label, items in emotion_words.items():
        ev[label] = _uniq(items)

    # Urgency.
    urgency_hits = [h for h in by_cat.get("urgency", ()) if not h.negated]
    urgency = sum(h.weight for h in urgency_hits)
    if exclaims >= 3:
        urgency += 0.3
    elif exclaims == 2:
        urgency += 0.15
    if shouting:
        urgency += 0.3
    sig.urgency = min(1.0, urgency)
    urgency_words = _uniq([h.text for h in urgency_hits] + (["!!!"] if exclaims >= 3 else [])
                          + (["capitals"] if shouting else []))
    if urgency_words:
        ev["urgency"] = urgency_words
    for hit in by_cat.get("urgency", ()):
        if hit.negated:
            sig.negated.append(f"not {hit.text}")

    # Technical content: vocabulary plus structure only code has.
    tech_hits = by_cat.get("tech", [])
    tech_total = sum(h.weight for h in tech_hits)
    tech_words = [h.text for h in sorted(tech_hits, key=lambda h: -h.weight)]
    for name, pattern, weight in _STRUCTURE:
        found = pattern.search(text)
        if found:
            tech_total += weight
            start = found.start()
            if name == "a file name":  # show "config.yaml", not ".yaml"
                while start > 0 and found.start() - start < 40 and (
                        text[start - 1].isalnum() or text[start - 1] in "_.-"):
                    start -= 1
            tech_words.append(text[start:found.end()].strip()[:24])
    command = _command(text)
    if command:
        tech_words.insert(0, command.split()[0])
        tech_total += 1.0
        sig.intents["command"] = 1.0
        ev["command"] = [command]
    sig.technical = _saturate(tech_total)
    if tech_words:
        ev["technical"] = _uniq(tech_words)

    # Intents.
    for label in ("greeting", "farewell", "thanks", "ack", "personal"):
        hits_l = [h for h in by_cat.get("social", ()) if h.label == label]
        if hits_l:
            sig.intents[label] = min(1.0, sum(h.weight for h in hits_l))
            ev[label] = _uniq(h.text for h in hits_l)
    sig.personal = sig.intents.pop("personal", 0.0)

    learning_hits = [h for h in by_cat.get("learning", ()) if not h.negated]
    sig.learning = min(1.0, sum(h.weight for h in learning_hits))
    if learning_hits:
        ev["learning"] = _uniq(h.text for h in sorted(learning_hits, key=lambda h: -h.weight))
    for hit in by_cat.get("learning", ()):
        if hit.negated:
            sig.negated.append(f"not {hit.text}")

    direct = by_cat.get("direct", [])
    if direct:
        sig.intents["direct"] = min(1.0, sum(h.weight for h in direct))
        ev["direct"] = _uniq(h.text for h in direct)

    debug = by_cat.get("debugging", [])
    if debug:
        sig.intents["debugging"] = _saturate(sum(h.weight for h in debug))
        ev["debugging"] = _uniq(h.text for h in debug)

    code = _code_request(by_cat)
    if code:
        sig.intents["code_request"] = 1.0
        ev["code_request"] = [code]

    if complaint:
        sig.intents["complaint"] = min(1.0, complaint)
    stripped = text.strip()
    if stripped.endswith("?") or (words and words[0] in _QUESTION_WORDS):
        sig.intents["question"] = 1.0
    if words and ("please" in words or _has(words, ("can", "you")) or _has(words, ("could", "you"))):
        sig.intents["request"] = 1.0

    meta = by_cat.get("meta", [])
    if meta:
        sig.meta = True
        ev["meta"] = _uniq(h.text for h in meta)

    sig.policy = _policy(text, words, by_cat, sig.technical)
    return sig


_QUESTION_WORDS = frozenset(
    "what why how when where which who whom whose is are can could should would does do will".split()
)


def _has(words: list[str], pair: tuple[str, str]) -> bool:
    return any(words[i] == pair[0] and words[i + 1] == pair[1] for i in range(len(words) - 1))


def _is_tech_word(word: str) -> bool:
    return any(t.category == "tech" for t in LEXICONS["topic"]._tags.get((word,), ()))


def _is_negated(words: list[str], clauses: list[int], blocks: list[bool], start: int) -> bool:
    """A negator up to four words back in the same clause.

    The look-back stops at another emotion, urgency or learning phrase ("not frustrated, just
    curious": the curiosity stands); a negator inside a phrase ("no worries") does not count.
    """
    between: list[str] = []
    for j in range(start - 1, max(-1, start - 5), -1):
        if clauses[j] != clauses[start] or blocks[j]:
            return False
        word = words[j]
        if word in NEGATORS:
            # "never been so frustrated", "couldn't be more annoyed" are emphasis, not negation.
            if "more" in between or (word == "never" and {"so", "this", "as"} & set(between)):
                return False
            return True
        between.append(word)
    return False


def _sarcasm(words: list[str], clauses: list[int], by_cat: dict[str, list[Hit]]) -> str | None:
    """'Oh great, another segfault': praise next to a mishap, with nothing actually fixed."""
    if by_cat.get("resolution"):
        return None
    negative = by_cat.get("negative_event", [])
    for hit in by_cat.get("sarcasm", ()):
        if hit.weight >= 1.0 or negative:
            return hit.text
    if negative:
        last = max(h.start for h in negative)
        for i, word in enumerate(words[:last]):
            clause_start = i == 0 or clauses[i - 1] != clauses[i]
            if word in _POSITIVE_WORDS and clause_start:
                return f"{word} ... {negative[-1].text}"
    return None


_SUBCOMMANDS = {
    "go": re.compile(r"\s+(?:build|run|test|mod|get|install|fmt|vet|version|env|generate|doc|"
                     r"clean|list|work|tool)\b"),
    "ip": re.compile(r"\s+(?:addr|address|a|link|route|r|neigh|netns|rule|-\w+)\b"),
}
_COMMAND_ARG = re.compile(r"(?:^|\s)(?:--?[A-Za-z0-9]|[./~]\S*+|\S*?\w\.\w{1,4}(?!\S))")


def _command(text: str) -> str | None:
    """A message that is (or starts with) a shell command line, like 'ls -la?'."""
    line = text.strip().lstrip("$#> ").strip()
    first = line.split(maxsplit=1)[0].lower().rstrip("?!.,:;") if line else ""
    if not first:
        return None
    rest = line[len(first):]
    command = line.splitlines()[0][:40]
    if first in _SUBCOMMANDS:
        return command if _SUBCOMMANDS[first].match(rest) else None
    if first in _COMMANDS:
        if first in ("export", "alias", "free", "screen") and not rest.strip(" ?"):
            return None  # English words too: need something after them
        return command
    if first in _AMBIGUOUS_COMMANDS and _COMMAND_ARG.search(rest):
        return command
    return None


def _code_request(by_cat: dict[str, list[Hit]]) -> str | None:
    """A verb like 'write' followed within six words by a code noun like 'function'."""
    verbs = by_cat.get("code_verb", [])
    if not verbs:
        return None
    nouns = by_cat.get("code_noun", []) + [h for h in by_cat.get("tech", []) if h.weight >= 0.6]
    found = _first_pair(verbs, nouns, 6)
    return f"{found[0].text} ... {found[1].text}" if found else None


_OWN = frozenset("my our your own mine".split())
_RECURSIVE = re.compile(r"(?:^|\s)(?:-[a-z]*r[a-z]*|--recursive)(?=\s|$)", re.I)


def _first_pair(firsts: Sequence[Hit], seconds: Sequence[Hit], window: int,
                blockers: Sequence[Hit] = ()) -> tuple[Hit, Hit] | None:
    """The first (a, b) with b starting within `window` words after a ends and no blocker
    starting between them. Sorted starts and bisection keep it O(n log n) on long input."""
    if not firsts or not seconds:
        return None
    ordered = sorted(seconds, key=lambda h: h.start)
    starts = [h.start for h in ordered]
    blocked = sorted(b.start for b in blockers)
    for a in firsts:
        i = bisect.bisect_left(starts, a.end)
        while i < len(ordered) and starts[i] <= a.end + window:
            b = ordered[i]
            j = bisect.bisect_left(blocked, a.end)
            if not (j < len(blocked) and blocked[j] < b.start):
                return a, b
            i += 1
    return None


def _verb_then_noun(verbs: list[Hit], nouns: list[Hit], blockers: list[Hit]) -> tuple[str, ...] | None:
    found = _first_pair([v for v in verbs if v.weight >= 0.8],
                        [n for n in nouns if n.weight >= 0.7], 8, blockers)
    return (found[0].text, found[1].text) if found else None


def _policy(text: str, words: list[str], by_cat: dict[str, list[Hit]],
            technical: float) -> PolicyFlag | None:
    for name, pattern in _DESTRUCTIVE_RE:
        for found in pattern.finditer(text):
            if name.startswith("rm ") and not _RECURSIVE.search(found.group(1)):
                continue  # "rm -f /tmp/x" is not recursive; keep looking
            return PolicyFlag("destructive_command", (found.group(0).strip()[:40], name))

    pol: dict[str, list[Hit]] = {}
    for hit in by_cat.get("policy", ()):
        pol.setdefault(hit.label, []).append(hit)

    def total(label: str) -> float:
        return sum(h.weight for h in pol.get(label, ()))

    def texts(*labels: str) -> tuple[str, ...]:
        return tuple(_uniq(h.text for label in labels for h in pol.get(label, ())))

    if total("destructive") >= 1.0:
        return PolicyFlag("destructive_command", texts("destructive"))
    if pol.get("harm"):
        return PolicyFlag("violence", texts("harm"))

    # Malware: strong phrases alone; otherwise a verb that makes or spreads it followed by a
    # malware noun, with no "detect"/"remove" between them ("write a script to detect
    # keyloggers" is defence).
    if pol.get("malware_strong"):
        return PolicyFlag("malware", texts("malware_strong", "malware"))
    found = _verb_then_noun(pol.get("steal", []), pol.get("stolen_goods", []), [])
    if found:
        return PolicyFlag("malware", found)
    found = _verb_then_noun(pol.get("create", []), pol.get("malware", []), pol.get("defense", []))
    if found:
        return PolicyFlag("malware", found)

    # Weapons: the unambiguous ones alone; the rest need a verb of making or getting, outside
    # a game or a history question.
    weapons = pol.get("weapon", [])
    if any(h.weight > 1.0 for h in weapons):
        return PolicyFlag("weapons", texts("weapon"))
    if not pol.get("fiction"):
        found = _verb_then_noun(pol.get("create", []), weapons, pol.get("defense", []))
        if found:
            return PolicyFlag("weapons", found)

    # Personal data: doxxing or stalking alone; harvesting/leaking with a kind of data; finding
    # a kind of data about a person.
    verbs = pol.get("pii_verb", [])
    noun, target = total("pii_noun"), total("pii_target")
    if any(h.weight >= 1.5 for h in verbs):
        return PolicyFlag("personal_data", texts("pii_verb", "pii_noun", "pii_target"))
    # "What's the home address of <someone>": the kind of data says it all, unless it is the
    # user's own ("update my home address") or a format in code ("validate an SSN in regex").
    for hit in pol.get("pii_noun", ()):
        if hit.weight >= 1.0 and technical < 0.5 and (hit.start == 0 or words[hit.start - 1] not in _OWN):
            return PolicyFlag("personal_data", (hit.text,))
    defence = pol.get("defense", [])
    for verb in pol.get("harvest", ()):
        shielded = any(verb.start - 3 <= b.start < verb.start for b in defence)
        if noun >= 0.4 and not shielded:
            return PolicyFlag("personal_data", (verb.text, *texts("pii_noun")))
    if verbs and noun >= 0.4 and target >= 0.4 and total("pii_verb") + noun + target >= 1.4:
        return PolicyFlag("personal_data", texts("pii_verb", "pii_noun", "pii_target"))

    # Disabling the assistant's safety.
    if pol.get("jailbreak"):
        return PolicyFlag("disable_safety", texts("jailbreak"))
    objects = pol.get("safety_object", [])
    # "your rules" is always about us; "the safety" with a bare "you" only outside a technical
    # context ("can you turn off the safety check in eslint" is about eslint).
    self_ref = any(h.weight >= 1.0 for h in pol.get("self", ()))
    addressed = bool(pol.get("self")) and (technical < 0.3 or bool(pol.get("unrestricted")))
    if self_ref or addressed:
        targets = objects
    else:
        targets = [o for o in objects if o.weight >= 0.9]
    verbs = [v for v in pol.get("bypass", ()) if v.weight >= 0.8]
    # Either order within six words: "disable your filters", "your filters, disable them".
    found = _first_pair(verbs, targets, 6) or _first_pair(targets, verbs, 6)
    if found:
        return PolicyFlag("disable_safety", tuple(h.text for h in found))
    if pol.get("unrestricted") and pol.get("roleplay") and pol.get("self"):
        return PolicyFlag("disable_safety", texts("roleplay", "unrestricted"))
    return None
